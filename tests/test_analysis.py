"""tools/analysis/erf.py (effective receptive fields) and
tools/analysis/benchmark_resolution.py (time / memory against input size),
tools/analysis/profile_vim_layer.py and tools/analysis/demo_range.py (the demos' measured range)."""
import importlib.util
import json
import os
import os.path as osp
import runpy

import pytest
import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools/analysis', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


erf_tool = load_tool('erf')
bench = load_tool('benchmark_resolution')


class Stack(nn.Module):
    """Convolutions in a row; returns a 1-tuple like a backbone."""

    def __init__(self, *convs):
        super().__init__()
        self.convs = nn.Sequential(*convs)

    def forward(self, x):
        return (self.convs(x), )


def support(erf):
    rows, cols = torch.nonzero(erf, as_tuple=True)
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


def test_erf_of_one_conv_is_its_kernel_window_and_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1).double()
    images = torch.randn(3, 3, 9, 9, dtype=torch.float64)
    erf, size = erf_tool.compute_erf(Stack(conv), images)
    assert size == (9, 9)
    assert support(erf) == (3, 5, 3, 5)  # the 3x3 window around the centre (4, 4)
    assert (erf[3:6, 3:6] > 0).all()
    # d(sum_k relu(y[k, 4, 4])) / d x[c, 3 + i, 3 + j] = sum_{k: y[k, 4, 4] > 0} w[k, c, i, j]
    w = conv.weight.detach()
    expect = 0
    for img in images:
        positive = (conv(img[None])[0, :, 4, 4] > 0).double()
        expect = expect + torch.einsum('k,kcij->cij', positive, w).abs().sum(0) / len(images)
    torch.testing.assert_close(erf[3:6, 3:6], expect, rtol=1e-12, atol=0)


def test_erf_of_a_strided_conv_and_of_two_convs():
    torch.manual_seed(1)
    erf, size = erf_tool.compute_erf(Stack(nn.Conv2d(3, 4, 3, stride=2, padding=1)),
                                     torch.randn(1, 3, 8, 8))
    assert size == (4, 4) and support(erf) == (3, 5, 3, 5)  # output (2, 2) <- input 3..5
    two = Stack(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    erf, _ = erf_tool.compute_erf(two, torch.randn(3, 3, 11, 11))
    assert support(erf) == (3, 7, 3, 7)  # 5x5 around (5, 5)
    assert (erf[3:8, 3:8] > 0).all()


def test_erf_averages_over_images():
    torch.manual_seed(2)
    model = Stack(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    images = torch.randn(3, 3, 7, 7)
    mean, _ = erf_tool.compute_erf(model, images)
    each = [erf_tool.compute_erf(model, img[None])[0] for img in images]
    torch.testing.assert_close(mean, sum(each) / 3)


def test_area_ratios_pinned():
    point = torch.zeros(9, 9)
    point[4, 4] = 1
    assert erf_tool.area_ratios(point) == {t: 1 / 81 for t in erf_tool.AREA_THRESHOLDS}
    flat = erf_tool.area_ratios(torch.ones(9, 9), (0.2, 0.99, 1.0))
    # 0.2 of 81 = 16.2 -> the 5x5 square; 0.99 and 1.0 -> the whole image
    assert flat == {0.2: 25 / 81, 0.99: 1.0, 1.0: 1.0}
    with pytest.raises(ValueError, match='zero everywhere'):
        erf_tool.area_ratios(torch.zeros(4, 4))


def tiny_config(tmp_path, base='vmamba_t_in1k_cls.py', backbone=None):
    backbone = backbone or "dict(arch=dict(_delete_=True, depths=(1, 1, 1, 1), dims=8), out_indices=(0, 1, 2, 3))"
    cfg = tmp_path / 'tiny.py'
    cfg.write_text(f"_base_ = ['{ROOT}/configs/{base}']\nmodel = dict(backbone={backbone})\n")
    return str(cfg)


def test_erf_cli_draws_ours_next_to_references(tmp_path):
    import matplotlib.image as mpimg
    out = tmp_path / 'erf.png'
    results = erf_tool.main([tiny_config(tmp_path), '--random', '2', '--size', '64',
                             '--compare', 'resnet50', 'deit_t', '--out', str(out)])
    assert [r['name'] for r in results] == ['tiny', 'resnet50', 'deit_t']
    png = mpimg.imread(str(out))
    assert png.ndim == 3 and png.shape[1] > 2 * png.shape[0]  # three panels side by side
    record = json.loads((tmp_path / 'erf.json').read_text())
    assert record['input_size'] == [64, 64] and record['num_images'] == 2
    assert [m['feature_size'] for m in record['models']] == [[2, 2], [2, 2], [4, 4]]
    by_name = {r['name']: r for r in results}
    # VMamba's four-direction scans (and DeiT's attention) reach every input pixel:
    # a global ERF already at initialisation.
    assert (by_name['tiny']['erf'] > 0).all() and (by_name['deit_t']['erf'] > 0).all()
    for r in results:
        ratios = list(r['area_ratio'].values())
        assert ratios == sorted(ratios) and 0 < ratios[0] and ratios[-1] <= 1


def test_erf_loads_a_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    model = erf_tool.config_backbone(cfg)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, ckpt)
    loaded = erf_tool.config_backbone(cfg, str(ckpt))
    fresh = erf_tool.config_backbone(cfg)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match='checkpoint file not found'):
        erf_tool.config_backbone(cfg, str(tmp_path / 'missing.pth'))


def test_erf_errors(tmp_path, capsys):
    vim_cls = tiny_config(tmp_path, 'vim_ti_in1k_cls.py', "dict(arch=dict(_delete_=True, embed_dims=16, "
                          "num_layers=2, d_state=4, expand=2))")
    with pytest.raises(ValueError, match=r'shape \(1, 16\); the ERF needs a \(B, C, h, w\)'):
        erf_tool.main([vim_cls, '--random', '1', '--size', '32', '--out', str(tmp_path / 'a.png')])
    cfg = tiny_config(tmp_path)
    with pytest.raises(IndexError, match='--stage 4 out of range; the backbone gives 4'):
        erf_tool.main([cfg, '--random', '1', '--size', '32', '--stage', '4',
                       '--out', str(tmp_path / 'a.png')])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no .jpg'):
        erf_tool.main([cfg, '--images', str(tmp_path / 'empty'), '--out', str(tmp_path / 'a.png')])
    with pytest.raises(SystemExit):
        erf_tool.main([cfg, '--out', str(tmp_path / 'a.jpg')])
    assert '--out must be a .png path' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        erf_tool.main([cfg, '--compare', 'vgg', '--out', str(tmp_path / 'a.png')])
    assert "invalid choice: 'vgg'" in capsys.readouterr().err


def test_erf_reads_an_image_directory(tmp_path):
    import mmcv
    import numpy as np
    (tmp_path / 'imgs').mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        mmcv.imwrite(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), str(tmp_path / f'imgs/{i}.png'))
    images = erf_tool.load_images(str(tmp_path / 'imgs'), 32)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert -3 < images.mean() < 3


def test_cpu_peak_memory_counts_what_a_step_adds():
    """A step that fills 64 MiB in 1 MiB tensors adds 64 MiB (give or take what the
    interpreter allocates or frees meanwhile), however large the process's earlier
    peak was, and also after a warm-up step whose freed blocks malloc keeps."""
    big = torch.ones(64 * 2**20 // 4 * 3)  # an earlier, larger peak of 192 MiB
    del big

    def step():
        parts = [torch.ones(2**20 // 4) for _ in range(64)]
        del parts

    cpu = torch.device('cpu')
    assert bench.timed(step, cpu) > 0  # the warm-up
    peak = bench.peak_memory(step, cpu)
    assert 60 * 2**20 < peak < 72 * 2**20


def test_peak_memory_counts_buffers_kept_between_steps(monkeypatch):
    """A point's peak memory is its first step at the size, so memory that an operator
    keeps between calls (like the scan's scratch buffers) counts at every size."""
    kept = {}

    class KeepsScratch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            n = x.numel() * 64  # floats: 48 MiB at 256x256
            if 'buf' not in kept or kept['buf'].numel() < n:
                kept['buf'] = torch.ones(n)
            return (x * self.w,)

    monkeypatch.setattr(bench, 'build_model', lambda name: KeepsScratch())
    res = bench.run_point('VMamba-T', 256, 'inference', reps=1, warmup=1, device='cpu')
    want = 3 * 256 * 256 * 64 * 4
    assert want - 2**20 < res['peak_mem_bytes'] < want + 16 * 2**20


def test_growth_factors_and_goal_verdict():
    sizes = [256, 512, 1024]
    pts = lambda per_pixel, exp: {str(s): dict(time_s=per_pixel * s**exp, peak_mem_bytes=s * s)  # noqa: E731
                                   for s in sizes}
    record = dict(sizes=sizes, goal=dict(from_size=512),
                  results={'VMamba-T': {t: pts(1e-6, 2) for t in bench.TASKS},
                           'Vim-Ti': {t: pts(1e-6, 2.2) for t in bench.TASKS},
                           'DeiT-Ti': {t: pts(1e-9, 3) for t in bench.TASKS}})
    bench.summarise(record)
    growth = record['growth_over_pixel_ratio']
    assert growth['VMamba-T']['train']['time_s'] == pytest.approx({'1024': 1.0})
    assert growth['Vim-Ti']['inference']['time_s'] == pytest.approx({'1024': 2 ** 0.2})
    assert growth['DeiT-Ti']['train']['time_s'] == pytest.approx({'1024': 2.0})
    assert growth['Vim-Ti']['train']['peak_mem_bytes'] == pytest.approx({'1024': 1.0})
    assert record['goal']['result'] == {
        'VMamba-T': dict(max_factor=pytest.approx(1.0), met=True),
        'Vim-Ti': dict(max_factor=pytest.approx(2 ** 0.2), met=False)}


def test_build_model_parameter_counts():
    counts = {name: sum(p.numel() for p in bench.build_model(name).parameters())
              for name in bench.MODELS}
    assert counts['VMamba-T'] == 29481408
    assert counts['Vim-Ti'] == 7148008 - 192 * 1000 - 1000  # the classifier less its head
    assert 27e6 < counts['Swin-T'] < 28.5e6 and 5.5e6 < counts['DeiT-Ti'] < 5.8e6
    with pytest.raises(ValueError, match="unknown model 'ViT'"):
        bench.build_model('ViT')


@pytest.mark.slow
def test_benchmark_resolution_smoke(tmp_path):
    """--smoke (two tiny sizes, one step per point, each point in a fresh process) with
    one model of ours and one reference: the record, the growth factors, the plot."""
    out = tmp_path / 'res.json'
    record, failures = bench.main(['--smoke', '--models', 'Vim-Ti', 'DeiT-Ti', '--out', str(out)])
    assert failures == 0
    saved = json.loads(out.read_text())
    assert saved['sizes'] == list(bench.SMOKE_SIZES) and saved['goal']['from_size'] == 32
    for model in ('Vim-Ti', 'DeiT-Ti'):
        for task in bench.TASKS:
            for size in bench.SMOKE_SIZES:
                point = saved['results'][model][task][str(size)]
                assert point['time_s'] > 0 and len(point['times_s']) == 1
                assert point['peak_mem_bytes'] >= 0
            assert set(saved['growth_over_pixel_ratio'][model][task]['time_s']) == {'64'}
    assert saved['results']['Vim-Ti']['train']['64']['params'] == 7148008 - 192 * 1000 - 1000
    assert set(saved['goal']['result']) == {'Vim-Ti'}
    assert (tmp_path / 'res.png').stat().st_size > 10000


def test_benchmark_resolution_reports_a_failed_point(tmp_path, monkeypatch):
    """A point whose worker fails is recorded with its error; the others are kept."""
    def fake_spawn(name, size, task, args):
        if size == 64:
            return dict(error='exit status 1: MemoryError', load_avg_1min=0.0)
        return dict(time_s=1.0, times_s=[1.0], peak_mem_bytes=1, peak_mem_bytes_all=[1],
                    params=1, load_avg_1min=0.0)
    monkeypatch.setattr(bench, 'spawn_point', fake_spawn)
    out = tmp_path / 'res.json'
    _, failures = bench.main(['--smoke', '--models', 'VMamba-T', '--out', str(out)])
    assert failures == 2
    saved = json.loads(out.read_text())
    assert saved['results']['VMamba-T']['train']['64']['error'] == 'exit status 1: MemoryError'
    assert saved['results']['VMamba-T']['train']['32']['time_s'] == 1.0
    assert saved['goal']['result']['VMamba-T'] == dict(max_factor=None, met=False)


def test_profile_vim_layer_writes_per_operator_times(tmp_path):
    """tools/analysis/profile_vim_layer.py: per-operator self times that add up to
    the total, the scan's share among them, for inference and a training step."""
    tool = load_tool('profile_vim_layer')
    out = tmp_path / 'profile.json'
    tool.main(['--size', '64', '--dim', '32', '--reps', '1', '--out', str(out)])
    record = json.loads(out.read_text())
    assert record['tokens'] == 17 and record['dim'] == 32
    assert record['scan_backend']['name'] == 'cpu'
    for task, op in (('inference', 'vmamba_mm_scan_cpu::scan_fwd'),
                     ('training', 'vmamba_mm_scan_cpu::scan_bwd')):
        t = record['tasks'][task]
        assert op in t['per_op_ms']
        assert abs(sum(t['per_op_ms'].values()) - t['total_ms']) < 1e-6 * max(1, t['total_ms'])
        assert 0 < t['scan_ms'] < t['total_ms']
        assert t['scan_fraction'] == t['scan_ms'] / t['total_ms']


def _demo_run(root, name, seed, train_log, tests):
    """A demo work dir as tools/demo.sh / demo_seg.sh leave it: the config the test dumped,
    the training log (with the seed it ran with), and per test run a log with its metrics."""
    work = root / name
    (work / '20261206_100000').mkdir(parents=True)
    (work / 'cfg.py').write_text('randomness = dict(seed=0)\n')  # the test's dump
    (work / '20261206_100000' / '20261206_100000.log').write_text(
        train_log + f'    seed: {seed}\n')
    for sub, metrics in tests.items():
        d = work / sub / '20261206_110000' if sub else work / '20261206_110000'
        d.mkdir(parents=True)
        (d / '20261206_110000.log').write_text('12/06 11:00:00 - mmengine - INFO - test\n')
        (d / '20261206_110000.json').write_text(json.dumps(metrics))


def test_demo_range_collects_metrics_times_and_ranges(tmp_path):
    demo_range = runpy.run_path(osp.join(ROOT, 'tools/analysis/demo_range.py'))
    det = {'coco/bbox_mAP': 0.4, 'coco/bbox_mAP_50': 0.6, 'coco/segm_mAP': 0.5,
           'coco/segm_mAP_50': 0.7}
    for k, (bbox, minutes) in enumerate([(0.4, 5), (0.25, 6)], 1):
        _demo_run(tmp_path, f'det_run{k}', k - 1,
                  '12/06 10:00:00 - mmengine - INFO - config\n'
                  f'12/06 10:0{minutes}:30 - mmengine - INFO - Epoch(train) [72][12/12]\n',
                  {'': dict(det, **{'coco/bbox_mAP': bbox})})
    _demo_run(tmp_path, 'seg_run1', 0,
              '2026/12/06 10:00:00 - mmengine - INFO - config\n'
              '2026/12/06 10:01:05 - mmengine - INFO - Iter(train) [200/200]\n',
              {'test_single_scale': {'mIoU': 89.66}, 'test_tta': {'mIoU': 90.1}})
    out = tmp_path / 'rec.json'
    assert demo_range['main'](['--collect', '--root', str(tmp_path), '--out', str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [r['seed'] for r in rec['det_runs']] == [0, 1]
    assert [r['train_seconds'] for r in rec['det_runs']] == [330.0, 390.0]
    assert rec['range']['det'] == {'bbox_mAP': [0.25, 0.4], 'segm_mAP': [0.5, 0.5],
                                   'train_seconds': [330.0, 390.0]}
    assert rec['range']['seg'] == {'mIoU': [89.66, 89.66], 'mIoU_tta': [90.1, 90.1],
                                   'train_seconds': [65.0, 65.0]}
    assert rec['cores'] == os.cpu_count() and rec['cpu_model']
    (tmp_path / 'seg_run2' / '20261206_100000').mkdir(parents=True)
    (tmp_path / 'seg_run2' / '20261206_100000' / '20261206_100000.log').write_text('x\n')
    with pytest.raises(FileNotFoundError, match='seg_run2: no training log'):
        demo_range['main'](['--collect', '--root', str(tmp_path), '--out', str(out)])
