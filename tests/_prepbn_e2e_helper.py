"""Imported (``custom_imports``) by the shared detector run of the e2e tests (``RUN_BODY``
in tests/_e2e.py).

``MMSlabPredChecksum`` is an evaluator metric that sums what the detector predicted on
the whole split (scores, box coordinates, mask pixels, number of detections). COCO AP of a
model trained for a few iterations is ~0 whatever the weights; these sums change with any
change of the network's function, so equal sums mean the same predictions.
"""
from typing import Sequence

from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module(name='MMSlabPredChecksum', force=True)
class PredChecksum(BaseMetric):
    default_prefix = 'checksum'

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = sample['pred_instances']
            masks = pred.get('masks')
            self.results.append(dict(
                img_id=sample['img_id'],
                num=float(len(pred['scores'])),
                scores=float(pred['scores'].double().sum()),
                bboxes=float(pred['bboxes'].double().sum()),
                masks=float(masks.double().sum()) if masks is not None else 0.0))

    def compute_metrics(self, results: list) -> dict:
        results = sorted(results, key=lambda r: r['img_id'])
        return {k: sum(r[k] for r in results) for k in ('num', 'scores', 'bboxes', 'masks')}
