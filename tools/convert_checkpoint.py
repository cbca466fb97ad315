"""Convert a released SLAB ImageNet checkpoint into mmslab's backbone names.

    python tools/convert_checkpoint.py slab_swin_tiny.pth slab_swin_tiny_mmslab.pth --family swin

The backbones also read the released files directly through
``init_cfg=dict(type='Pretrained', checkpoint=...)``; converting offline makes a file
mmengine's generic tools (e.g. ``load_checkpoint``) can read with our key names. The
output is written atomically and never onto the source (symlinks and hard links
resolved).
"""
import argparse
from typing import List, Optional

from mmslab.models.checkpoint import CONVERTERS, convert_checkpoint_file


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='released checkpoint (path or URL)')
    parser.add_argument('dst', help='output path (never the source)')
    parser.add_argument('--family', required=True, choices=sorted(CONVERTERS),
                        help='backbone family: pvt (SLABPVT) or swin (SLABSwin)')
    args = parser.parse_args(argv)
    for name in ('src', 'dst'):
        if not getattr(args, name).strip():
            parser.error(f'argument {name}: must be a path, got an empty string')
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    n = convert_checkpoint_file(args.src, args.dst, args.family)
    print(f'wrote {n} tensors to {args.dst}')


if __name__ == '__main__':
    main()
