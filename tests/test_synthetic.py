"""The synthetic COCO / ADE20K-layout data sets (mmslab.datasets.synthetic) and the
ImageNet-layout classification set (mmslab.datasets.imagenet_synthetic)."""
import copy
import filecmp
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mmslab.datasets import (ADE_CLASSES, CLS_CLASSES, SHAPE_CLASSES, imagenet_classes,
                             make_ade_semantic, make_coco_instances, make_imagenet_folders)
from mmslab.datasets import imagenet_synthetic, synthetic

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_slab_pvt_demo.py')
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'upernet_slab_swin_demo.py')


def _files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [osp.relpath(osp.join(d, n), root) for n in names]
    return sorted(out)


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    make_coco_instances(root, num_train=12, num_val=6, image_size=160, seed=3)
    return root


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    make_ade_semantic(root, num_train=8, num_val=4, image_size=128, seed=3)
    return root


# ----------------------------------------------------------------- determinism
def test_same_seed_same_files(tmp_path, coco_root, ade_root):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    make_coco_instances(a, num_train=12, num_val=6, image_size=160, seed=3)
    make_ade_semantic(b, num_train=8, num_val=4, image_size=128, seed=3)
    for new, ref in ((a, coco_root), (b, ade_root)):
        names = _files(ref)
        assert names == _files(new)
        match, mismatch, errors = filecmp.cmpfiles(ref, new, names, shallow=False)
        assert not mismatch and not errors and len(match) == len(names)
    # another seed gives other scenes
    make_coco_instances(c, num_train=12, num_val=6, image_size=160, seed=4)
    ref = json.load(open(osp.join(coco_root, 'annotations',
                                  'instances_train2017.json')))
    other = json.load(open(osp.join(c, 'annotations', 'instances_train2017.json')))
    assert ref['annotations'] != other['annotations']
    # and the two splits differ from each other
    val = json.load(open(osp.join(coco_root, 'annotations',
                                  'instances_val2017.json')))
    assert ref['annotations'][:3] != val['annotations'][:3]


# ----------------------------------------------------------------- COCO layout
def test_coco_layout_and_pycocotools(coco_root):
    for split, n in (('train', 12), ('val', 6)):
        coco = COCO(osp.join(coco_root, 'annotations', f'instances_{split}2017.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(
            SHAPE_CLASSES)
        assert len(coco.getImgIds()) == n
        for img in coco.loadImgs(coco.getImgIds()):
            path = osp.join(coco_root, f'{split}2017', img['file_name'])
            im = cv2.imread(path)
            assert im is not None and im.shape == (img['height'], img['width'], 3)
            assert len(coco.getAnnIds(imgIds=[img['id']])) >= 1
        ann_ids = coco.getAnnIds()
        assert len(set(ann_ids)) == len(ann_ids)


def _ann_masks(coco, img):
    out = []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img['id']])):
        m = coco.annToMask(ann).astype(bool)
        out.append((ann, m))
    return out


def test_coco_masks_boxes_areas_consistent(coco_root):
    coco = COCO(osp.join(coco_root, 'annotations', 'instances_train2017.json'))
    class_rgb = np.array([synthetic.CLASS_RGB[c] for c in SHAPE_CLASSES], float)
    n_checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        rgb = cv2.imread(osp.join(coco_root, 'train2017',
                                  img['file_name']))[..., ::-1].astype(float)
        masks = _ann_masks(coco, img)
        union = np.zeros((img['height'], img['width']), int)
        for ann, m in masks:
            assert ann['iscrowd'] == 0 and ann['area'] > 0
            # polygons are valid COCO polygons; one hole-free piece per object
            assert len(ann['segmentation']) == 1
            poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
            assert len(poly) >= 3
            x, y, w, h = ann['bbox']
            assert w > 0 and h > 0
            # bbox contains the polygon, and is tight around the mask
            assert poly[:, 0].min() >= x and poly[:, 0].max() <= x + w
            assert poly[:, 1].min() >= y and poly[:, 1].max() <= y + h
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == [
                x, y, x + w, y + h]
            # the polygon rasterises to exactly `area` pixels
            assert m.sum() == ann['area']
            rle = mask_utils.merge(
                mask_utils.frPyObjects(ann['segmentation'], img['height'],
                                       img['width']))
            assert mask_utils.area(rle) == ann['area']
            # the pixels under the mask show the object's own class colour
            # (an occluded part would show its occluder instead)
            d = ((rgb[m][:, None, :] - class_rgb[None]) ** 2).sum(-1)
            nearest = d.argmin(1)
            assert (nearest == ann['category_id'] - 1).mean() > 0.9
            union += m
            n_checked += 1
        # visible parts of different objects never overlap
        assert union.max() <= 1
    assert n_checked >= 12


def test_scene_occlusion_is_visible_part():
    rng = np.random.default_rng(11)
    n_occluded = 0
    for _ in range(20):
        _, objects = synthetic._random_scene(rng, 128, 5, (16, 70), 0.5,
                                             SHAPE_CLASSES, True)
        for i, o in enumerate(objects):
            later = np.zeros_like(o['full'])
            for p in objects[i + 1:]:
                later |= p['full']
            expected = o['full'] & ~later
            assert np.array_equal(o['visible'], expected)
            assert o['visible'].sum() >= 0.5 * o['full'].sum()
            assert not synthetic._has_hole_or_split(o['visible'])
            n_occluded += int(o['visible'].sum() < o['full'].sum())
    assert n_occluded > 0  # the generator does produce occlusion


def test_mask_to_polygons_round_trip():
    rng = np.random.default_rng(0)
    for cls in SHAPE_CLASSES:
        poly = synthetic.shape_polygon(cls, 40.3, 37.8, float(rng.uniform(9, 60)),
                                       float(rng.uniform(0, 6)))
        m = synthetic.rasterize(poly, 80, 80)
        polys = synthetic.mask_to_polygons(m)
        back = mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects(polys, 80, 80))).astype(bool)
        assert np.array_equal(back, m), cls


# ----------------------------------------------------------------- mmdet
def test_mmdet_coco_dataset_with_demo_pipeline(coco_root):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope('mmdet')
    cfg = Config.fromfile(DET_DEMO)
    for loader, n in ((cfg.train_dataloader, 12), (cfg.val_dataloader, 6)):
        ds_cfg = copy.deepcopy(loader.dataset)
        ds_cfg.data_root = coco_root + '/'
        ds = DATASETS.build(ds_cfg)
        assert len(ds) == n
        assert tuple(ds.metainfo['classes']) == SHAPE_CLASSES
        sample = ds[0]
        inputs, data_sample = sample['inputs'], sample['data_samples']
        assert inputs.shape[0] == 3 and max(inputs.shape[1:]) == 256
        gt = data_sample.gt_instances
        assert len(gt) >= 1
        assert gt.labels.min() >= 0 and gt.labels.max() < len(SHAPE_CLASSES)
        # training pipeline: masks resized with the image; test pipeline: the
        # annotations are loaded after Resize, at the original size (as mmdet does)
        expected = (tuple(inputs.shape[1:]) if loader is cfg.train_dataloader else
                    tuple(data_sample.ori_shape))
        assert gt.masks.masks.shape[1:] == expected
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        # each resized mask lies inside its resized box
        for box, m in zip(boxes.numpy(), gt.masks.masks):
            ys, xs = np.nonzero(m)
            assert xs.min() >= np.floor(box[0]) - 1 and xs.max() <= np.ceil(box[2])
            assert ys.min() >= np.floor(box[1]) - 1 and ys.max() <= np.ceil(box[3])


# ----------------------------------------------------------------- mmseg
def test_ade_layout_and_labels(ade_root):
    for split, n in (('training', 8), ('validation', 4)):
        imgs = sorted(os.listdir(osp.join(ade_root, 'images', split)))
        anns = sorted(os.listdir(osp.join(ade_root, 'annotations', split)))
        assert len(imgs) == n and all(f.endswith('.jpg') for f in imgs)
        assert [f[:-4] for f in anns] == [f[:-4] for f in imgs]
        values = set()
        for f in anns:
            lab = cv2.imread(osp.join(ade_root, 'annotations', split, f),
                             cv2.IMREAD_UNCHANGED)
            assert lab.dtype == np.uint8 and lab.ndim == 2
            values |= set(np.unique(lab).tolist())
        # 0 = "other", 1 = background, 2..5 = shapes
        assert values <= set(range(len(ADE_CLASSES) + 1))
        assert 1 in values and len(values & {2, 3, 4, 5}) >= 2


def _seg_labels(ds):
    out = set()
    for i in range(len(ds)):
        seg = ds[i]['data_samples'].gt_sem_seg.data
        out |= set(np.unique(seg.numpy()).tolist())
    return out


def test_mmseg_ade20k_dataset_loads(ade_root):
    from mmengine.registry import init_default_scope

    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope('mmseg')
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', reduce_zero_label=True),
        dict(type='PackSegInputs')
    ]
    ds = ADE20KDataset(
        data_root=ade_root,
        data_prefix=dict(img_path='images/training',
                         seg_map_path='annotations/training'),
        pipeline=pipeline)
    assert len(ds) == 8
    labels = _seg_labels(ds)
    # reduce_zero_label: stored k+1 -> k, stored 0 ("other") -> 255 (ignored)
    assert labels <= set(range(len(ADE_CLASSES))) | {255}
    assert 0 in labels  # background


def test_mmseg_demo_dataset(ade_root):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope('mmseg')
    cfg = Config.fromfile(SEG_DEMO)
    for loader, n in ((cfg.train_dataloader, 8), (cfg.val_dataloader, 4)):
        ds_cfg = copy.deepcopy(loader.dataset)
        ds_cfg.data_root = ade_root
        ds = DATASETS.build(ds_cfg)
        assert len(ds) == n
        assert tuple(ds.metainfo['classes']) == ADE_CLASSES
        labels = _seg_labels(ds)
        assert labels <= set(range(len(ADE_CLASSES))) | {255}
        assert len(labels - {255}) >= 2


# ----------------------------------------------------------------- ImageNet layout
IMAGENET = dict(num_classes=5, train_per_class=3, val_per_class=2, image_size=40, seed=3)


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet'))
    make_imagenet_folders(root, **IMAGENET)
    return root


def test_imagenet_same_seed_same_files(tmp_path, imagenet_root):
    again, other = str(tmp_path / 'again'), str(tmp_path / 'other')
    files = make_imagenet_folders(again, **IMAGENET)
    assert files == {s: osp.join(again, 'meta', f'{s}.txt') for s in ('train', 'val')}
    names = _files(imagenet_root)
    assert names == _files(again)
    assert len(names) == 2 + 5 * (3 + 2)  # two ann files, the images
    match, mismatch, errors = filecmp.cmpfiles(imagenet_root, again, names, shallow=False)
    assert not mismatch and not errors and len(match) == len(names)
    make_imagenet_folders(other, **dict(IMAGENET, seed=4))
    assert _files(other) == names  # the same files, other pixels
    img = 'train/circle/circle_00000.JPEG'
    assert not filecmp.cmp(osp.join(imagenet_root, img), osp.join(other, img), shallow=False)


def test_make_demo_data_writes_the_imagenet_set(tmp_path, imagenet_root, load_tool, capsys):
    """``tools/make_demo_data.py --only imagenet`` writes the set of the same arguments."""
    out = str(tmp_path / 'demo')
    load_tool('make_demo_data').main([
        '--only', 'imagenet', '--imagenet-root', out, '--num-classes', '5', '--num-train',
        '3', '--num-val', '2', '--image-size', '40', '--seed', '3'])
    assert '5 classes, 3 train / 2 val images per class' in capsys.readouterr().out
    names = _files(imagenet_root)
    assert _files(out) == names
    match, mismatch, errors = filecmp.cmpfiles(imagenet_root, out, names, shallow=False)
    assert not mismatch and not errors


def test_imagenet_layout_and_ann_files(imagenet_root):
    classes = imagenet_classes(5)
    assert classes == tuple(sorted(CLS_CLASSES[:5])) and set(classes) >= set(SHAPE_CLASSES)
    for split, n in (('train', 3), ('val', 2)):
        assert sorted(os.listdir(osp.join(imagenet_root, split))) == list(classes)
        with open(osp.join(imagenet_root, 'meta', f'{split}.txt')) as f:
            lines = [line.split() for line in f.read().splitlines()]
        assert len(lines) == 5 * n
        for rel, label in lines:
            assert rel.split('/')[0] == classes[int(label)] and rel.endswith('.JPEG')
            im = cv2.imread(osp.join(imagenet_root, split, rel))
            assert im is not None and im.shape == (40, 40, 3)
        assert sorted(int(label) for _, label in lines) == sorted(list(range(5)) * n)


def test_imagenet_one_shape_of_its_class_per_image(tmp_path):
    """Each image holds one shape of its class, in one piece, of 0.45-0.95 of the side
    (its area at least a quarter of its circumscribed circle's), in its class's colour:
    the colour nearest to the shape's mean is its class's, the rest of the image is
    further from every class colour."""
    rng = np.random.default_rng(0)
    rgb = np.array([imagenet_synthetic.CLS_RGB[c] for c in CLS_CLASSES], float)
    for _ in range(3):
        for k, cls in enumerate(CLS_CLASSES):
            img, mask = imagenet_synthetic._shape_image(rng, cls, 64, (0.45, 0.95), True)
            assert img.shape == (64, 64, 3) and not synthetic._has_hole_or_split(mask)
            assert mask.sum() >= 0.25 * np.pi * (0.45 * 64 / 2) ** 2, cls
            inside, outside = img[mask].mean(0), img[~mask].mean(0)
            assert ((rgb - inside) ** 2).sum(1).argmin() == k, cls
            assert ((rgb - outside) ** 2).sum(1).min() > ((rgb[k] - inside) ** 2).sum(), cls
    with pytest.raises(ValueError, match='unknown shape class'):
        imagenet_synthetic.cls_polygon('ring', 0, 0, 10, 0)
    with pytest.raises(ValueError, match='num_classes must be'):
        make_imagenet_folders(str(tmp_path), num_classes=9)


def test_mmpretrain_reads_the_imagenet_layout(imagenet_root):
    """mmpretrain's ``ImageNet(split=...)`` and ``CustomDataset`` (ann file, and folder
    mode without one) load the set with the same samples and labels."""
    from mmengine.registry import init_default_scope

    import mmslab  # noqa: F401  (mmpretrain next to the installed transformers)
    from mmpretrain.datasets import CustomDataset, ImageNet
    init_default_scope('mmpretrain')
    classes = imagenet_classes(5)
    for split, n in (('train', 3), ('val', 2)):
        by_ann = CustomDataset(data_root=imagenet_root, ann_file=f'meta/{split}.txt',
                               data_prefix=split, metainfo=dict(classes=classes))
        imagenet = ImageNet(data_root=imagenet_root, split=split,
                            metainfo=dict(classes=classes))
        folders = CustomDataset(data_root=imagenet_root, data_prefix=split)
        assert tuple(folders.CLASSES) == tuple(by_ann.CLASSES) == classes
        assert len(by_ann) == len(imagenet) == len(folders) == 5 * n
        assert by_ann.get_gt_labels().tolist() == imagenet.get_gt_labels().tolist()
        assert sorted(by_ann.get_gt_labels().tolist()) == sorted(list(range(5)) * n)

        def samples(ds):
            return sorted((ds.get_data_info(i)['img_path'], int(ds.get_data_info(i)['gt_label']))
                          for i in range(len(ds)))

        assert samples(by_ann) == samples(imagenet) == samples(folders)
        for path, label in samples(by_ann):
            assert osp.basename(osp.dirname(path)) == classes[label]
