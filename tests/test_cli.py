"""The tools' command lines: a bad argument value exits with status 2 and argparse's usage
error naming the argument, the value and what is accepted (mmslab.validation's argparse
types; the functions behind them: tests/test_validation.py)."""
import pytest


@pytest.mark.parametrize('tool,argv,words', [
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--shape', '0', '64'],
     "argument --shape: must be >= 1, got 0"),
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--shape', '64', '6.5'],
     "argument --shape: must be an int >= 1, got '6.5'"),
    ('deploy', ['c.py', 'k.pth', 'o.pth', '--rtol', '0'],
     'argument --rtol: must be a finite number > 0, got 0'),
    ('deploy', ['c.py', 'k.pth', ''], 'argument out: must be a path, got an empty string'),
    ('recalibrate_bn', ['c.py', 'k.pth', '--iters', '0'], 'argument --iters: must be >= 1, got 0'),
    ('recalibrate_bn', ['c.py', 'k.pth', '--iters', 'all'],
     "argument --iters: must be an int >= 1, got 'all'"),
    ('recalibrate_bn', ['c.py', 'k.pth'], 'the following arguments are required: --iters'),
    ('convert_checkpoint', ['a.pth', 'b.pth', '--family', 'vit'],
     "argument --family: invalid choice: 'vit'"),
    ('make_demo_data', ['--max-objects', '0'], 'argument --max-objects: must be >= 1, got 0'),
    ('make_demo_data', ['--num-val', '-1'], 'argument --num-val: must be >= 0, got -1'),
    ('make_demo_data', ['--seed', '-3'], 'argument --seed: must be >= 0, got -3'),
])
def test_cli_arguments_are_validated(tool, argv, words, capsys, load_tool):
    module = load_tool(tool)
    with pytest.raises(SystemExit) as exc:
        module.main(argv)
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
