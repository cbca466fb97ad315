"""Which form a SLAB state dict is in: trained (PRepBN norms present) or folded (norms
folded away by ``switch_to_deploy`` / tools/deploy.py), and the guard that keeps the two
from mixing (:func:`check_state_dict_form`, run by every SLAB backbone on every load).
"""
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

# A trained-form (unfolded) SLAB state dict has PRepBN entries: <norm>.norm1.{weight,bias}
# (LayerNorm), <norm>.norm2.{alpha,bn.*} (RepBN), <norm>.lam. A folded (deploy) one has
# none of them, and Swin blocks carry a `qkv_pad` buffer.
_TRAINED_KEY = re.compile(r'(^|\.)norm\d?\.(norm1\.(weight|bias)|norm2\.(alpha|bn\.\w+)|lam)$')
_FOLDED_KEY = re.compile(r'(^|\.)qkv_pad$')
_BLOCK_KEY = re.compile(r'^(.*blocks\.\d+\.)(.+)$')
# what a block holds in both forms: the attention's input and output projections, the MLP
_INPUT_PROJECTIONS = ('attn.qkv.weight', 'attn.q.weight')
_BLOCK_CORE = ('attn.proj.weight', 'mlp.fc1.weight', 'mlp.fc2.weight')


def _folded_blocks(keys: Iterable[str]) -> List[str]:
    """Evidence of a folded backbone without a folded-only buffer (PVT): the
    ``mlp.fc1.weight`` key of every *complete* block (attention input and output
    projections and both MLP layers present) that has no norm entry at all. A trimmed
    dict whose blocks are incomplete is no evidence either way."""
    blocks: Dict[str, Set[str]] = {}
    for k in keys:
        m = _BLOCK_KEY.match(k)
        if m:
            blocks.setdefault(m.group(1), set()).add(m.group(2))
    return [prefix + 'mlp.fc1.weight' for prefix, rest in blocks.items()
            if all(r in rest for r in _BLOCK_CORE)
            and any(r in rest for r in _INPUT_PROJECTIONS)
            and not any(r.startswith(('norm1.', 'norm2.')) for r in rest)]


def state_dict_form(keys: Iterable[str]) -> Tuple[Optional[str], List[str]]:
    """Whether state-dict ``keys`` (relative to the backbone) are of a trained-form
    (``'trained'``: PRepBN norm entries present) or a folded (``'folded'``: a Swin
    ``qkv_pad`` buffer, or a complete block without norms) SLAB backbone, with a few keys
    that show it; ``(None, [])`` when the keys say neither (no block at all, or only
    incomplete blocks without norms: a trimmed dict)."""
    keys = list(keys)
    trained = [k for k in keys if _TRAINED_KEY.search(k)]
    if trained:  # the LayerNorm / BatchNorm entries show it best, lam last
        return 'trained', sorted(trained, key=lambda k: k.endswith('.lam'))[:3]
    folded = [k for k in keys if _FOLDED_KEY.search(k)]
    if folded:
        return 'folded', folded[:3]
    folded = _folded_blocks(keys)
    if folded:
        return 'folded', folded[:3]
    return None, []


def check_state_dict_form(owner: str, deploy: bool, keys: Iterable[str],
                          source: str = 'the state dict', prefix: str = '') -> None:
    """Refuse a trained-form state dict for a folded (``deploy=True``) backbone and a
    folded one for a trained-form backbone, saying which is which and how to convert.

    Args:
        owner: the backbone's class name.
        deploy: whether the backbone is folded.
        keys: the state-dict keys relative to the backbone.
        source: what is being loaded (a file name), for the message.
        prefix: the backbone's prefix in the loaded dict (``'backbone.'`` in a detector).

    Raises:
        ValueError: the forms differ.
    """
    form, examples = state_dict_form(keys)
    if form is None or form == ('folded' if deploy else 'trained'):
        return
    shown = ', '.join(repr(prefix + k) for k in examples)
    if deploy:
        raise ValueError(
            f'{source} is a trained-form (unfolded) {owner} state dict (it has PRepBN norm '
            f'entries, e.g. {shown}), but this {owner} has deploy=True and loads only '
            f're-parameterized (folded) weights. Fold the trained checkpoint first: '
            f'`python tools/deploy.py CONFIG CHECKPOINT OUT.pth` writes the folded OUT.pth '
            f'and OUT_config.py (with backbone.deploy=True); or build the model with '
            f'deploy=False, load, then call switch_to_deploy() (mmslab.models.reparameterize '
            f'for a whole detector / segmentor).')
    raise ValueError(
        f'{source} is a folded (deploy / re-parameterized) {owner} state dict (its norms are '
        f'folded away: e.g. {shown} without PRepBN entries), but this {owner} is in trained '
        f'form (deploy=False). Build it with deploy=True to load folded weights (the '
        f'<out stem>_config.py that tools/deploy.py wrote next to the folded checkpoint does); '
        f'a folded checkpoint cannot be turned back into the trained form, so to train or '
        f'fine-tune load the trained checkpoint it was folded from.')
