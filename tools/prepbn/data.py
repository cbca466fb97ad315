"""The study's data: the synthetic shapes set (seed 0), written once per settings."""
import json
import os.path as osp

from mmslab.fileio import atomic_write_text


def make_data(root: str, num_train: int, num_val: int, image_size: int) -> str:
    """Write the synthetic shapes set under ``root`` unless the one there was written with
    the same settings (``study_data.json``); returns ``root`` with a trailing '/'."""
    from mmslab.datasets import make_coco_instances
    stamp = osp.join(root, 'study_data.json')
    want = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=0)
    if osp.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == want:
                return root + '/'
    make_coco_instances(root, num_train=num_train, num_val=num_val, image_size=image_size,
                        seed=0, img_ext='.png')
    atomic_write_text(json.dumps(want), stamp)
    return root + '/'
