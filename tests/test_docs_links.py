"""The documentation's relative links resolve.

Every relative link in README.md and docs/**/*.md must point to an existing file; a
``#anchor`` into a markdown file must name one of its headings, with GitHub's anchor
rules. Every test that docs/failures.md names must exist. Pure text checks: no
OpenMMLab packages needed.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / 'README.md', *(ROOT / 'docs').rglob('*.md')])

FENCE = re.compile(r'^\s*(```|~~~)')
CODE_SPAN = re.compile(r'`[^`]*`')
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')
EXTERNAL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')  # http:, https:, mailto:, ...


def _prose_lines(path):
    """Yields (line number, line) outside fenced code blocks."""
    in_fence = False
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def github_slug(heading):
    """The anchor GitHub gives a heading (before de-duplication).

    Inline markup is reduced to its text, the result lower-cased, every character
    that is not a letter, digit, space, hyphen or underscore dropped, and spaces
    turned into hyphens.
    """
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links -> their text
    text = text.replace('`', '').lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    """All heading anchors of a markdown file, with GitHub's -1, -2 suffixes."""
    seen = {}
    result = set()
    for _, line in _prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f'{slug}-{count}')
    return result


def relative_links():
    """(source file, line number, target) for every relative link in the docs."""
    links = []
    for path in DOC_FILES:
        for number, line in _prose_lines(path):
            for target in LINK.findall(CODE_SPAN.sub('', line)):
                if not EXTERNAL.match(target):
                    links.append((path, number, target))
    return links


LINKS = relative_links()


def test_the_docs_have_relative_links():
    assert len(LINKS) > 20, f'found only {len(LINKS)} relative links: is the parser broken?'


@pytest.mark.parametrize(
    'source, line, target', LINKS,
    ids=[f'{p.relative_to(ROOT)}:{n}:{t}' for p, n, t in LINKS])
def test_relative_link_resolves(source, line, target):
    where = f'{source.relative_to(ROOT)}:{line}: link {target!r}'
    file_part, _, anchor = target.partition('#')
    resolved = (source.parent / file_part).resolve() if file_part else source
    assert resolved.exists(), f'{where} points to a missing file {resolved}'
    if anchor and resolved.suffix == '.md':
        known = anchors(resolved)
        assert anchor in known, (
            f'{where}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)} '
            f'(anchors: {sorted(known)})')


def test_github_slug():
    assert github_slug('Backbones, CPU (`backbones_cpu*.json`)') == 'backbones-cpu-backbones_cpujson'
    assert github_slug('Analysis: effective receptive fields') == 'analysis-effective-receptive-fields'
    assert github_slug('An older NVIDIA driver') == 'an-older-nvidia-driver'
    assert github_slug('See [the ops](ops.md) now') == 'see-the-ops-now'


def test_every_test_named_in_failures_md_exists():
    text = (ROOT / 'docs' / 'failures.md').read_text(encoding='utf-8')
    named = set(re.findall(r'`(test_\w+\.py)::(test_\w+)`', text))
    assert len(named) >= 15, f'failures.md names only {len(named)} tests'
    missing = []
    for file_name, test_name in sorted(named):
        test_file = ROOT / 'tests' / file_name
        source = test_file.read_text(encoding='utf-8') if test_file.exists() else ''
        if not re.search(rf'^\s*def {test_name}\(', source, re.MULTILINE):
            missing.append(f'{file_name}::{test_name}')
    assert not missing, f'docs/failures.md names tests that do not exist: {missing}'


def test_every_failure_row_names_a_test():
    rows = [line for line in (ROOT / 'docs' / 'failures.md').read_text(encoding='utf-8').splitlines()
            if line.startswith('| ') and not line.startswith('| fault ')]
    assert rows, 'docs/failures.md has no fault table'
    unbacked = [row.split(' | ')[0] for row in rows
                if not re.search(r'`test_\w+\.py::test_\w+`', row.rsplit(' | ', 1)[-1])]
    assert not unbacked, f'rows of docs/failures.md without a named test: {unbacked}'
