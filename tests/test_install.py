"""Installing mmslab into an existing OpenMMLab environment changes none of its packages:
pip's resolver, asked for a dry run with no index, finds every requirement already met by
the environment's own torch / torchvision / mmcv / mmengine / mmdet / mmseg (whichever
tested stack this venv holds) and would install mmslab alone."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pip_install_changes_no_installed_package(tmp_path):
    report = tmp_path / 'report.json'
    # --no-index: whatever pip would have to fetch is an error (and is printed)
    check = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
         '--no-build-isolation', '--disable-pip-version-check', '--report', str(report),
         '-q', str(REPO)],
        capture_output=True, text=True)
    assert check.returncode == 0, (
        'pip would need packages that are not installed (a requirement of pyproject.toml '
        f'is not met by this environment):\n{check.stderr}')
    planned = {item['metadata']['name'].lower(): item['metadata']['version']
               for item in json.loads(report.read_text())['install']}
    assert set(planned) == {'mmslab'}, planned
