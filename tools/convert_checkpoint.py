"""Convert a released SLAB ImageNet checkpoint into mmslab's names.

    python tools/convert_checkpoint.py slab_swin_tiny.pth slab_swin_tiny_mmslab.pth --family swin
    python tools/convert_checkpoint.py slab_swin_tiny.pth slab_swin_tiny_cls.pth \\
        --classifier configs/cls/slab_swin_tiny.py [--drop-head]

``--family``: the backbone's weights (``stages.*``). The backbones also read the released
files directly through ``init_cfg=dict(type='Pretrained', checkpoint=...)``; converting
offline makes a file mmengine's generic tools (e.g. ``load_checkpoint``) can read with our
key names.

``--classifier CONFIG``: the whole classifier of an mmpretrain config (configs/cls/):
``backbone.*``, ``head.fc.*`` (and SLAB-Swin's final ``backbone.norm.*``), checked
against the config's model first (a detector's file, a DeiT file for a Swin model or a
head of another class count are refused, with what the file is, and nothing is
written). ``--drop-head`` leaves the file's head out (fine-tuning on another class count).
The configs' ``ReleaseCheckpointHook`` does the same on load, so ``mim test mmpretrain
CONFIG --checkpoint <released file>`` needs no conversion (docs/classification.md).

The output is written atomically and never onto the source (symlinks and hard links
resolved). Loading keeps torch's ``weights_only=True`` default (torch >= 2.6). A training
checkpoint whose extra entries (an ``argparse.Namespace``, a yacs config ...) that loader
refuses can be converted once with ``--trust``: the source is then unpickled with
``weights_only=False``, which can run code, so use it only on a file you trust. The output
holds tensors only and loads everywhere with ``weights_only=True``.
"""
import argparse
from typing import List, Optional

from mmslab.deploy import build_model_from_config
from mmslab.models.classifier_conversion import convert_classifier_checkpoint
from mmslab.models.key_conversion import CONVERTERS, convert_checkpoint_file
from mmslab.validation import argparse_path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', type=argparse_path, help='released checkpoint (path or URL)')
    parser.add_argument('dst', type=argparse_path, help='output path (never the source)')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--family', choices=sorted(CONVERTERS),
                        help='backbone family: pvt (SLABPVT) or swin (SLABSwin): the '
                        "backbone's weights")
    target.add_argument('--classifier', type=argparse_path, metavar='CONFIG',
                        help='an mmpretrain classifier config (configs/cls/): the whole '
                        "classifier's weights, checked against its model")
    parser.add_argument('--drop-head', action='store_true',
                        help="with --classifier: leave the file's head out")
    parser.add_argument('--trust', action='store_true',
                        help='read SRC with weights_only=False (it may run code): only for a '
                        'file you trust whose extra entries the weights_only loader refuses')
    args = parser.parse_args(argv)
    if args.drop_head and args.classifier is None:
        parser.error('--drop-head goes with --classifier CONFIG (a backbone conversion has '
                     'no head to drop)')
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.classifier is not None:
        model = build_model_from_config(args.classifier)
        n = convert_classifier_checkpoint(args.src, args.dst, model, drop_head=args.drop_head,
                                          trust=args.trust)
    else:
        n = convert_checkpoint_file(args.src, args.dst, args.family, trust=args.trust)
    print(f'wrote {n} tensors to {args.dst}')


if __name__ == '__main__':
    main()
