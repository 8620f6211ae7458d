"""Nothing lost: the divergence guard, crash-safe checkpoints, exact and
fault-tolerant resume, strict evaluation (vmamba_mm.engine, tools/train.py,
tools/test.py), end to end on a tiny VMamba / Vim classifier on CPU."""
import glob
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

import vmamba_mm  # noqa: F401  (registers the engine; weights_only loading of checkpoints)
from toy_classifier import ROOT, make_images, write_config
from vmamba_mm.engine import DivergenceError, DivergenceGuardHook, SafeRunner
from vmamba_mm.engine.checkpoint import (checkpoint_problem, format_mismatch, resume_candidates,
                                         state_dict_mismatch)

FAULTS = ['fault_hooks']  # tests/fault_hooks.py, on PYTHONPATH of the tool runs


def train(*args, expect_ok=True):
    """Run tools/train.py (one thread, like every run it is compared with)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, osp.join(ROOT, 'tests')]),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'train.py {args} failed ({proc.returncode}):\n{out[-6000:]}')
    return proc.returncode, out


def run_test_tool(*args, expect_ok=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, osp.join(ROOT, 'tests')]),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if expect_ok and proc.returncode != 0:
        raise AssertionError(f'test.py {args} failed ({proc.returncode}):\n{out[-6000:]}')
    return proc.returncode, out


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def tensors(ckpt):
    """Every tensor of a checkpoint's model and optimizer state, by name."""
    out = {f'state_dict.{k}': v for k, v in ckpt['state_dict'].items()}
    for pid, state in ckpt['optimizer']['state'].items():
        out.update({f'optimizer.{pid}.{k}': v for k, v in state.items()
                    if isinstance(v, torch.Tensor)})
    return out


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('engine')
    data = make_images(str(tmp / 'data'))
    return dict(tmp=tmp, data=data, cfg=write_config(tmp / 'cfg.py', data))


@pytest.fixture(scope='module')
def uninterrupted(toy):
    """Run A: 4 epochs x 2 iterations, checkpoint and validation every epoch."""
    work = toy['tmp'] / 'a'
    train(toy['cfg'], '--work-dir', work)
    return work


def test_every_config_inherits_the_guard():
    paths = [p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
             if '_base_' not in p]
    assert len(paths) >= 17
    for path in paths:
        cfg = Config.fromfile(path)
        assert cfg.runner_type == 'SafeRunner', path
        assert 'DivergenceGuardHook' in [h['type'] for h in cfg.custom_hooks], path
        assert cfg.default_hooks.checkpoint.type == 'SafeCheckpointHook', path


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(toy, uninterrupted):
    """Run B is SIGKILLed right after its 2nd checkpoint, then resumed with --resume:
    its final checkpoint equals run A's in every tensor (weights, buffers, AdamW
    state). Without the random states (a checkpoint of plain mmengine) it does not."""
    tmp = toy['tmp']
    kill_cfg = write_config(tmp / 'kill.py', toy['data'], extra_imports=FAULTS,
                            custom_hooks=[dict(type='KillAfterCheckpointHook', epoch=2)])
    work = tmp / 'b'
    code, out = train(kill_cfg, '--work-dir', work, expect_ok=False)
    assert code == -signal.SIGKILL, out[-3000:]
    assert osp.isfile(work / 'epoch_2.pth') and not osp.exists(work / 'epoch_3.pth')
    _, out = train(toy['cfg'], '--work-dir', work, '--resume')
    assert 'resumed epoch: 2, iter: 4' in out
    ref, got = tensors(load(uninterrupted / 'epoch_4.pth')), tensors(load(work / 'epoch_4.pth'))
    assert ref.keys() == got.keys() and len(ref) > 20
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, differ

    # the same resume from a checkpoint without random states is not exact
    plain = tmp / 'c'
    plain.mkdir()
    ckpt = load(work / 'epoch_2.pth')
    assert len(ckpt['meta']['rng_states']) == 1
    del ckpt['meta']['rng_states']
    torch.save(ckpt, plain / 'epoch_2.pth')
    _, out = train(toy['cfg'], '--work-dir', plain, '--resume')
    assert 'holds no random states' in out
    got = tensors(load(plain / 'epoch_4.pth'))
    assert any(not torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint(toy, uninterrupted, tmp_path):
    work = tmp_path / 'w'
    shutil.copytree(uninterrupted, work)
    newest = work / 'epoch_4.pth'
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])  # what a kill while writing would leave
    (work / 'last_checkpoint').write_text(str(newest))
    _, out = train(toy['cfg'], '--work-dir', work, '--resume',
                   '--cfg-options', 'train_cfg.max_epochs=5')
    assert f'skipping checkpoint {newest} (named in last_checkpoint): unreadable' in out
    assert 'resumed epoch: 3, iter: 6' in out
    assert checkpoint_problem(str(work / 'epoch_5.pth')) is None
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_5.pth')


class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, msg):
        self.lines.append(msg)


def _fake_runner(work_dir):
    return SimpleNamespace(work_dir=str(work_dir), logger=_Log())


def test_auto_resume_candidates_stale_pointer_and_none_readable(tmp_path):
    for n in (1, 2, 10):
        torch.save({'n': torch.tensor(n)}, tmp_path / f'epoch_{n}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_11.pth'))  # deleted file
    candidates, named = resume_candidates(str(tmp_path))
    assert named == str(tmp_path / 'epoch_11.pth')
    assert candidates == [str(tmp_path / f'epoch_{n}.pth') for n in (11, 10, 2, 1)]
    runner = _fake_runner(tmp_path)
    assert SafeRunner._newest_readable_checkpoint(runner) == str(tmp_path / 'epoch_10.pth')
    assert runner.logger.lines == [f'resume: skipping checkpoint {tmp_path / "epoch_11.pth"} '
                                   '(named in last_checkpoint): file does not exist']
    for n in (1, 2, 10):
        (tmp_path / f'epoch_{n}.pth').write_bytes(b'PK\x03\x04 not really')
    with pytest.raises(RuntimeError, match='no readable checkpoint') as err:
        SafeRunner._newest_readable_checkpoint(_fake_runner(tmp_path))
    for n in (11, 10, 2, 1):
        assert f'epoch_{n}.pth' in str(err.value)
    # an empty work dir: nothing to resume, training starts from scratch
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert SafeRunner._newest_readable_checkpoint(_fake_runner(empty)) is None


@pytest.mark.slow
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    """NaN weights before iteration 4 (epoch 2): training stops there with an error
    naming epoch, iteration and loss terms; with max_keep_ckpts=1 epoch_1.pth
    stays, finite, and last_checkpoint names it."""
    hooks = dict(logger=dict(type='LoggerHook', interval=1),
                 checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=1))
    cfg = write_config(tmp_path / 'nan.py', toy['data'], extra_imports=FAULTS,
                       custom_hooks=[dict(type='PoisonWeightsHook', iter=4)], default_hooks=hooks)
    code, out = train(cfg, '--work-dir', tmp_path / 'w', expect_ok=False)
    assert code == 1
    assert ('train.py: error: training diverged at epoch 2, iteration 4 (batch 2 of the epoch): '
            "non-finite loss terms ['loss'") in out
    assert 'loss=nan' in out and 'Training stopped; no checkpoint was written' in out
    assert [f for f in os.listdir(tmp_path / 'w') if '.pth' in f] == ['epoch_1.pth']
    ckpt = load(tmp_path / 'w' / 'epoch_1.pth')
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())
    assert (tmp_path / 'w' / 'last_checkpoint').read_text() == str(tmp_path / 'w' / 'epoch_1.pth')

    # weights turning non-finite right before a save: refused, epoch_1.pth kept
    cfg = write_config(tmp_path / 'nan2.py', toy['data'], extra_imports=FAULTS,
                       custom_hooks=[dict(type='PoisonWeightsHook', after_epoch=2)],
                       default_hooks=hooks)
    code, out = train(cfg, '--work-dir', tmp_path / 'v', expect_ok=False)
    assert code == 1 and 'refusing to write a checkpoint at epoch 2' in out
    assert [f for f in os.listdir(tmp_path / 'v') if '.pth' in f] == ['epoch_1.pth']  # no .tmp
    assert checkpoint_problem(str(tmp_path / 'v' / 'epoch_1.pth')) is None


class _Scaler:
    def __init__(self):
        self.scale = 65536.0

    def get_scale(self):
        return self.scale


def _guard_runner(amp):
    hub = MessageHub.get_instance(f'guard-test-{amp}')
    optim = SimpleNamespace(loss_scaler=_Scaler()) if amp else SimpleNamespace()
    return SimpleNamespace(optim_wrapper=optim, message_hub=hub, train_loop=None, iter=6, epoch=1)


def _step(hook, runner, loss, skipped=False, grad_norm=None):
    hook.before_train_iter(runner, 0)
    if skipped:
        runner.optim_wrapper.loss_scaler.scale /= 2
    if grad_norm is not None:
        runner.message_hub.update_scalar('train/grad_norm', grad_norm)
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(loss), loss_cls=loss))


def test_guard_amp_skipped_steps_grad_norm_and_bad_settings():
    hook = DivergenceGuardHook(max_skipped_steps=3)
    runner = _guard_runner(amp=True)
    for _ in range(2):  # skipped steps (inf gradients) are normal under AMP ...
        _step(hook, runner, 1.0, skipped=True, grad_norm=float('inf'))
    _step(hook, runner, 1.0)  # ... a good step resets the count
    _step(hook, runner, 1.0, skipped=True)
    _step(hook, runner, 1.0, skipped=True)
    with pytest.raises(DivergenceError, match='3 AMP steps in a row were skipped'):
        _step(hook, runner, 1.0, skipped=True)
    with pytest.raises(DivergenceError, match=r"non-finite loss terms \['loss', 'loss_cls'\]"):
        _step(DivergenceGuardHook(), _guard_runner(amp=True), float('nan'))
    # without AMP a non-finite gradient norm (clip_grad) stops training
    runner = _guard_runner(amp=False)
    _step(hook, runner, 1.0, grad_norm=3.0)
    with pytest.raises(DivergenceError, match=r'non-finite gradient norm \(inf\)'):
        _step(hook, runner, 1.0, grad_norm=float('inf'))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match='max_skipped_steps'):
            DivergenceGuardHook(max_skipped_steps=bad)


def test_state_dict_mismatch_allowance():
    model = {'a.weight': torch.zeros(2, 3), 'bn.num_batches_tracked': torch.tensor(0),
             'b': torch.zeros(4)}
    ckpt = {'a.weight': torch.zeros(3, 3), 'c': torch.zeros(1),
            'data_preprocessor.mean': torch.zeros(3)}
    got = state_dict_mismatch(model, ckpt)
    assert got == dict(missing=['b'], unexpected=['c'],
                       shape=['a.weight: checkpoint (3, 3) vs model (2, 3)'])
    text = format_mismatch(got)
    assert '1 keys missing in the checkpoint' in text and 'c' in text and 'a.weight' in text
    assert format_mismatch(state_dict_mismatch(model, dict(model))) == ''


@pytest.mark.slow
def test_test_tool_refuses_a_checkpoint_of_another_model(toy, uninterrupted, tmp_path):
    ckpt = uninterrupted / 'epoch_4.pth'
    _, out = run_test_tool(toy['cfg'], ckpt, '--work-dir', tmp_path / 'ok')
    assert 'accuracy/top1' in out
    vim_cfg = write_config(tmp_path / 'vim.py', toy['data'], backbone='vim')
    code, out = run_test_tool(vim_cfg, ckpt, '--work-dir', tmp_path / 'x', expect_ok=False)
    assert code == 1 and f'test.py: error: checkpoint {ckpt} does not fit the model' in out
    assert 'missing in the checkpoint' in out and 'backbone.pos_embed' in out
    assert 'not in the model' in out and 'backbone.patch_embed.conv1.weight' in out
    assert 'accuracy/top1' not in out
    _, out = run_test_tool(vim_cfg, ckpt, '--non-strict', '--work-dir', tmp_path / 'y')
    assert '--non-strict: checkpoint' in out and 'accuracy/top1' in out
    # an unreadable checkpoint is named
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(ckpt.read_bytes()[:1000])
    code, out = run_test_tool(toy['cfg'], bad, expect_ok=False)
    assert code == 1 and f"cannot read checkpoint '{bad}'" in out
