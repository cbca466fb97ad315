"""Convert a released SLAB ImageNet checkpoint into mmslab's backbone names.

    python tools/convert_checkpoint.py slab_swin_tiny.pth slab_swin_tiny_mmslab.pth --family swin

The backbones also read the released files directly through
``init_cfg=dict(type='Pretrained', checkpoint=...)``; converting offline makes a file
mmengine's generic tools (e.g. ``load_checkpoint``) can read with our key names. The
output is written atomically and never onto the source (symlinks and hard links
resolved).

Loading keeps torch's ``weights_only=True`` default (torch >= 2.6). A training checkpoint
whose extra entries (an ``argparse.Namespace``, a yacs config ...) that loader refuses can
be converted once with ``--trust``: the source is then unpickled with
``weights_only=False``, which can run code, so use it only on a file you trust. The output
holds tensors only and loads everywhere with ``weights_only=True``.
"""
import argparse
from typing import List, Optional

from mmslab.models.key_conversion import CONVERTERS, convert_checkpoint_file
from mmslab.validation import argparse_path


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', type=argparse_path, help='released checkpoint (path or URL)')
    parser.add_argument('dst', type=argparse_path, help='output path (never the source)')
    parser.add_argument('--family', required=True, choices=sorted(CONVERTERS),
                        help='backbone family: pvt (SLABPVT) or swin (SLABSwin)')
    parser.add_argument('--trust', action='store_true',
                        help='read SRC with weights_only=False (it may run code): only for a '
                        'file you trust whose extra entries the weights_only loader refuses')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    n = convert_checkpoint_file(args.src, args.dst, args.family, trust=args.trust)
    print(f'wrote {n} tensors to {args.dst}')


if __name__ == '__main__':
    main()
