"""File output: the tools write atomically (a write that fails, or a tool killed mid-write,
leaves the old file or none, never half a file; permissions and symlinks are kept) and
never onto their inputs (the same file by any path: symlinks, hard links, ``<out
stem>_config.py``)."""
import glob
import os
import os.path as osp
import random
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from mmslab.fileio import atomic_save, atomic_write, atomic_write_text, check_outputs, same_file

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ============================================================================ atomic writes
def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path):
    dst = tmp_path / 'sub' / 'out.bin'
    atomic_write_text('old', dst)  # creates the folder
    assert dst.read_text() == 'old'
    with pytest.raises(RuntimeError, match='disk on fire'):
        with atomic_write(dst) as f:
            f.write(b'partial new content')
            raise RuntimeError('disk on fire')
    assert dst.read_text() == 'old'
    assert os.listdir(dst.parent) == ['out.bin']  # the temporary file is gone
    atomic_save({'a': torch.arange(3)}, dst)
    assert torch.equal(torch.load(dst)['a'], torch.arange(3))
    assert os.listdir(dst.parent) == ['out.bin']
    # the umask applies as with open()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o666 & ~umask
    os.chmod(dst, 0o600)  # a replaced file keeps its permissions
    atomic_write_text('private', dst)
    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o600
    # a symlink is written through, not replaced
    target = tmp_path / 'target.txt'
    target.write_text('old')
    (tmp_path / 'link.txt').symlink_to(target)
    atomic_write_text('new', tmp_path / 'link.txt')
    assert osp.islink(tmp_path / 'link.txt') and target.read_text() == 'new'
    with pytest.raises(ValueError, match="mode must be 'w', 'wt' or 'wb', got 'a'"):
        with atomic_write(dst, 'a'):
            pass


def _temp_files(folder: str, name: str) -> list:
    return glob.glob(osp.join(folder, f'.{name}.*.tmp'))


def test_tool_killed_mid_write_leaves_the_old_file_or_none(tmp_path, load_tool):
    """tools/convert_checkpoint.py (a real subprocess) gets SIGKILL while it writes a large
    output: the destination is the old file intact (or absent), never half a file."""
    src = str(tmp_path / 'release.pth')
    n = 4 * 2 ** 20  # 4 x 16 MiB of float32
    torch.save({'model': {f'layers.0.blocks.{i}.mlp.fc1.weight': torch.full((n, ), float(i))
                          for i in range(4)}}, src)
    out_dir = str(tmp_path / 'out')
    os.makedirs(out_dir)
    dst = osp.join(out_dir, 'converted.pth')
    old = b'an old, complete file that must survive'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'convert_checkpoint.py'), src, dst,
           '--family', 'swin']
    interrupted = {True: 0, False: 0}  # kills during the write, with / without an old file
    completed = 0
    for attempt in range(12):
        with_old = attempt % 2 == 0
        if with_old:
            with open(dst, 'wb') as f:
                f.write(old)
        elif osp.exists(dst):
            os.remove(dst)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            temps = _temp_files(out_dir, 'converted.pth')
            if temps and osp.getsize(temps[0]) > 0:
                time.sleep(random.uniform(0, 0.01))  # a random moment of the write
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait(timeout=60)
        leftovers = _temp_files(out_dir, 'converted.pth')
        if proc.returncode == -signal.SIGKILL and leftovers:
            # killed during the write: the destination is untouched (the old bytes, or
            # still absent); the partial data went only to the temporary file
            if with_old:
                assert open(dst, 'rb').read() == old
            else:
                assert not osp.exists(dst)
            for path in leftovers:
                os.remove(path)
            interrupted[with_old] += 1
        else:  # finished, or killed after the rename: the complete new file
            assert proc.returncode in (0, -signal.SIGKILL)
            sd = torch.load(dst)['state_dict']
            assert torch.equal(sd['stages.0.blocks.3.mlp.fc1.weight'], torch.full((n, ), 3.0))
            completed += 1
        if all(interrupted.values()):
            break
    assert all(interrupted.values()), (interrupted, completed)
    # and uninterrupted (its main() in this process), the tool writes the complete file
    load_tool('convert_checkpoint').main(cmd[2:])
    assert torch.load(dst)['meta']['converted_from'] == src
    assert _temp_files(out_dir, 'converted.pth') == []




# ============================================================================ never onto inputs
def test_check_outputs_compares_real_files(tmp_path):
    src = tmp_path / 'in.pth'
    src.write_bytes(b'x')
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    (tmp_path / 'dir_link').symlink_to(tmp_path)
    for out in ('link.pth', 'hard.pth', 'dir_link/in.pth', './in.pth'):
        path = str(tmp_path / out)
        assert same_file(path, src)
        with pytest.raises(ValueError, match=r'tool: refusing to overwrite the input checkpoint '
                           r'.*in\.pth: the output .* is the same file'):
            check_outputs({'output': path}, {'checkpoint': str(src)}, 'tool')
    check_outputs({'output': str(tmp_path / 'new.pth')}, {'checkpoint': str(src), 'x': None})
    with pytest.raises(ValueError, match='the a .* and the b .* are the same file'):
        check_outputs({'a': str(tmp_path / 'o.pth'), 'b': str(tmp_path / 'o.pth')}, {})


def test_convert_refuses_symlinked_and_hard_linked_source(release_checkpoint, tmp_path,
                                                           load_tool):
    src = release_checkpoint('slab_pvt_tiny')
    before = open(src, 'rb').read()
    (tmp_path / 'link.pth').symlink_to(src)
    os.link(src, tmp_path / 'hard.pth')
    tool = load_tool('convert_checkpoint')
    for dst in ('link.pth', 'hard.pth'):
        with pytest.raises(ValueError, match=r'refusing to overwrite the input source '
                           r'checkpoint .*: the output checkpoint .* is the same file'):
            tool.main([src, str(tmp_path / dst), '--family', 'pvt'])
    assert open(src, 'rb').read() == before


@pytest.fixture
def deploy_inputs(tmp_path):
    config = tmp_path / 'model_config.py'
    config.write_text('model = dict(type="MissingOnPurpose")\n')
    ckpt = tmp_path / 'trained.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}}, ckpt)
    return str(config), str(ckpt), config.read_bytes(), ckpt.read_bytes()


@pytest.mark.parametrize('out,words', [
    ('{config}', r'refusing to overwrite the input config .*model_config\.py: the folded '
                 r'checkpoint .*model_config\.py is the same file'),
    ('{ckpt}', r'refusing to overwrite the input trained checkpoint .*trained\.pth: the folded '
               r'checkpoint'),
    ('{dir}/model.pth', r'refusing to overwrite the input config .*model_config\.py: the folded '
                        r'config \(<out stem>_config\.py\) .*model_config\.py is the same file'),
    ('{dir}/link.pth', r'refusing to overwrite the input trained checkpoint .* \(it resolves to '
                       r'.*trained\.pth\)'),
    ('{dir}/link_config.pth', r'refusing to overwrite the input config'),
])
def test_deploy_never_writes_onto_its_inputs(deploy_inputs, tmp_path, out, words, load_tool):
    """`deploy.py CFG CKPT CFG`, an OUT whose <stem>_config.py is CFG, symlinks to inputs."""
    config, ckpt, config_bytes, ckpt_bytes = deploy_inputs
    os.symlink(ckpt, tmp_path / 'link.pth')
    os.symlink(config, tmp_path / 'link_config_config.py')
    out = out.format(config=config, ckpt=ckpt, dir=tmp_path)
    tool = load_tool('deploy')
    with pytest.raises(ValueError, match=words):
        tool.main([config, ckpt, out])
    assert open(config, 'rb').read() == config_bytes
    assert open(ckpt, 'rb').read() == ckpt_bytes


def test_recalibrate_never_writes_onto_its_inputs(deploy_inputs, tmp_path):
    from mmslab.prepbn.recalibration import recalibrate_checkpoint
    config, ckpt, config_bytes, ckpt_bytes = deploy_inputs
    os.symlink(ckpt, tmp_path / 'link.pth')
    for out, words in ((str(tmp_path / 'link.pth'), 'the input checkpoint'),
                       (config, 'the input config')):
        with pytest.raises(ValueError, match=f'recalibrate_checkpoint: refusing to overwrite '
                           f'{words}'):
            recalibrate_checkpoint(config, ckpt, 1, out)
    assert open(config, 'rb').read() == config_bytes
    assert open(ckpt, 'rb').read() == ckpt_bytes
