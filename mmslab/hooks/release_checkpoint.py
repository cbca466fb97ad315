"""Loading released SLAB classification files as they are: ``load_from`` / ``mim test
--checkpoint`` of an mmpretrain classifier config (docs/classification.md)."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmslab.models.classifier_conversion import classifier_state_dict
from mmslab.validation import check_bool


@HOOKS.register_module()
class ReleaseCheckpointHook(Hook):
    """Let an mmpretrain ``ImageClassifier`` with a SLAB backbone (``SLABPVT``, ``SLABSwin``,
    ``SLABDeiT``) load a released classification file (``{'model': ...}`` in the release's
    names) through ``load_from``, i.e. ``mim test mmpretrain CONFIG --checkpoint
    slab_swin_tiny.pth``, and check every checkpoint it loads that way.

    mmengine's ``Runner.load_checkpoint`` reads ``checkpoint['state_dict']`` and loads it
    non-strictly: a release file has no ``'state_dict'`` (nothing would load), and a
    checkpoint of another model would load in part without a word. Before that, in
    ``after_load_checkpoint`` (priority ``VERY_HIGH``: before ``EMAHook`` copies the
    weights), this hook puts the state dict the classifier loads in
    ``checkpoint['state_dict']`` (:func:`~mmslab.models.classifier_conversion.
    classifier_state_dict`: a release file converted, an mmengine one as it is), after
    checking that it fits the model exactly; otherwise (a detector's checkpoint, a file of
    another backbone family or DeiT model, a head of another class count ...) it raises a
    ``ValueError`` that says what the file is, and nothing is loaded. Resuming
    (``resume=True``) is left to mmengine.

    Args:
        drop_head (bool): leave the file's head out and keep the model's own (freshly
            initialised) head: fine-tuning a released model on another class count.
            Defaults to False.
    """

    priority = 'VERY_HIGH'

    def __init__(self, drop_head: bool = False) -> None:
        self.drop_head = check_bool(type(self).__name__, 'drop_head', drop_head)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if getattr(runner, '_resume', False):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = str(getattr(runner, '_load_from', None) or 'the checkpoint')
        state_dict = classifier_state_dict(model, checkpoint, source=source,
                                           drop_head=self.drop_head)
        checkpoint.pop('model', None)
        checkpoint['state_dict'] = state_dict
        runner.logger.info(f'ReleaseCheckpointHook: {len(state_dict)} tensors of {source} fit '
                           f'the model' + (" (the file's head left out)"
                                           if self.drop_head else ''))
