"""Structural presets of the SLAB backbones: one frozen, validated dataclass per family.

* :class:`PVTArch`: ``embed_dims``, ``num_heads``, ``mlp_ratios`` (one per stage) and
  ``depths``;
* :class:`SwinArch`: ``embed_dims`` (the stage-1 width; stage i has ``embed_dims * 2**i``
  channels), ``depths`` and ``num_heads`` (one per stage);
* :class:`DeiTArch`: ``embed_dims``, ``depth`` (blocks), ``num_heads`` and ``mlp_ratio``
  of a plain (one-resolution) vision transformer.

An instance is valid by construction (``__post_init__`` checks and normalises it), so a
backbone never re-checks its structure. :meth:`~ArchPreset.resolve` turns a backbone's
``arch`` argument (a preset name, a dict of settings or an instance) and its explicit
overrides into one instance, with errors that name the backbone. Training
hyperparameters (drop-path rate, ...) are not part of a preset.
"""
import dataclasses
from typing import Any, Dict, Mapping, Tuple, Type, TypeVar, Union

from ..validation import check_float, check_float_seq, check_int, check_int_seq, is_int

ArchT = TypeVar('ArchT', bound='ArchPreset')


@dataclasses.dataclass(frozen=True)
class ArchPreset:
    """Base of the per-family presets: validation and resolution."""

    def __post_init__(self) -> None:
        for name, value in self._checked(type(self).__name__, dataclasses.asdict(self)).items():
            object.__setattr__(self, name, value)

    @classmethod
    def _checked(cls, owner: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        """``settings`` checked (errors name ``owner``) and normalised (ints, floats,
        tuples)."""
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        """The number of stages (every family has ``depths``, one per stage)."""
        return len(self.depths)  # type: ignore[attr-defined]

    def as_dict(self) -> Dict[str, Any]:
        """The settings as lists (what a config would hold)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def resolve(cls: Type[ArchT], owner: str, zoo: Mapping[str, ArchT],
                arch: Union[str, Mapping[str, Any], 'ArchPreset'],
                **overrides: Any) -> ArchT:
        """The preset ``arch`` (a name in ``zoo``, a dict of settings or an instance) with
        the non-None ``overrides`` applied, checked; errors name ``owner``."""
        fields = [f.name for f in dataclasses.fields(cls)]
        if isinstance(arch, cls):
            settings = dataclasses.asdict(arch)
        elif isinstance(arch, Mapping):
            unknown = sorted(set(arch) - set(fields))
            if unknown:
                raise ValueError(f'{owner}: arch settings {unknown} are not structural '
                                 f'settings of a {cls.__name__} (accepted: {fields})')
            # a field with a default (DeiTArch.mlp_ratio) may be left out
            settings = {f.name: f.default for f in dataclasses.fields(cls)
                        if f.default is not dataclasses.MISSING}
            settings.update(arch)
        elif isinstance(arch, str) and arch in zoo:
            settings = dataclasses.asdict(zoo[arch])
        else:
            error = ValueError if isinstance(arch, str) else TypeError
            raise error(f'{owner}: unknown arch {arch!r}; choose one of {sorted(zoo)} or give '
                        f'a dict of the settings')
        settings.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in fields if settings.get(k) is None]
        if missing:
            raise ValueError(f'{owner}: arch settings lack {missing}')
        return cls(**cls._checked(owner, settings))


def _per_stage(depths: Tuple[int, ...]) -> str:
    return f'one per stage: depths={list(depths)} has {len(depths)} stages'


@dataclasses.dataclass(frozen=True)
class PVTArch(ArchPreset):
    """SLAB-PVT structure: per-stage widths, heads and MLP ratios, and depths."""

    embed_dims: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    mlp_ratios: Tuple[float, ...]
    depths: Tuple[int, ...]

    @classmethod
    def _checked(cls, owner: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        depths = check_int_seq(owner, 'depths', settings['depths'], min=1, min_length=1)
        n, hint = len(depths), _per_stage(depths)
        embed_dims = check_int_seq(owner, 'embed_dims', settings['embed_dims'], n, min=1,
                                   length_hint=hint)
        num_heads = check_int_seq(owner, 'num_heads', settings['num_heads'], n, min=1,
                                  length_hint=hint)
        mlp_ratios = check_float_seq(owner, 'mlp_ratios', settings['mlp_ratios'], n, min=0,
                                     min_open=True, length_hint=hint)
        for i, (c, h, r) in enumerate(zip(embed_dims, num_heads, mlp_ratios)):
            if c % h:
                raise ValueError(f'{owner}: embed_dims[{i}]={c} is not divisible by '
                                 f'num_heads[{i}]={h}')
            if int(c * r) < 1:
                raise ValueError(f'{owner}: mlp_ratios[{i}]={r:g} gives an MLP of '
                                 f'int({c} * {r:g}) = 0 hidden channels; it must be >= {1 / c:g}')
        return dict(embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios,
                    depths=depths)


@dataclasses.dataclass(frozen=True)
class SwinArch(ArchPreset):
    """SLAB-Swin structure: the stage-1 width, depths and per-stage heads."""

    embed_dims: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]

    @classmethod
    def _checked(cls, owner: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        embed_dims = settings['embed_dims']
        if not is_int(embed_dims):
            raise TypeError(f'{owner}: embed_dims is one int (the stage-1 width; stage i has '
                            f'embed_dims * 2**i channels), got {embed_dims!r} '
                            f'({type(embed_dims).__name__})')
        embed_dims = check_int(owner, 'embed_dims', embed_dims, min=1)
        depths = check_int_seq(owner, 'depths', settings['depths'], min=1, min_length=1)
        num_heads = check_int_seq(owner, 'num_heads', settings['num_heads'], len(depths),
                                  min=1, length_hint=_per_stage(depths))
        for i, h in enumerate(num_heads):
            if (embed_dims * 2 ** i) % h:
                raise ValueError(f'{owner}: stage {i} has embed_dims * 2**{i} = '
                                 f'{embed_dims * 2 ** i} channels, not divisible by '
                                 f'num_heads[{i}]={h}')
        return dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads)

    @property
    def widths(self) -> Tuple[int, ...]:
        """Channels of every stage."""
        return tuple(self.embed_dims * 2 ** i for i in range(self.num_stages))


@dataclasses.dataclass(frozen=True)
class DeiTArch(ArchPreset):
    """DeiT structure: width, number of blocks, heads and MLP ratio (every block alike)."""

    embed_dims: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0

    @classmethod
    def _checked(cls, owner: str, settings: Dict[str, Any]) -> Dict[str, Any]:
        embed_dims = check_int(owner, 'embed_dims', settings['embed_dims'], min=1)
        depth = check_int(owner, 'depth', settings['depth'], min=1)
        num_heads = check_int(owner, 'num_heads', settings['num_heads'], min=1)
        mlp_ratio = check_float(owner, 'mlp_ratio', settings['mlp_ratio'], min=0, min_open=True)
        if embed_dims % num_heads:
            raise ValueError(f'{owner}: embed_dims={embed_dims} is not divisible by '
                             f'num_heads={num_heads}')
        if int(embed_dims * mlp_ratio) < 1:
            raise ValueError(f'{owner}: mlp_ratio={mlp_ratio:g} gives an MLP of '
                             f'int({embed_dims} * {mlp_ratio:g}) = 0 hidden channels; it must '
                             f'be >= {1 / embed_dims:g}')
        return dict(embed_dims=embed_dims, depth=depth, num_heads=num_heads,
                    mlp_ratio=mlp_ratio)

    @property
    def num_stages(self) -> int:
        """The number of blocks (each block is one stage for ``out_indices`` /
        ``frozen_stages``)."""
        return self.depth


#: the SLAB-PVT presets (PVT v1 widths, heads, MLP ratios)
PVT_ARCHS: Dict[str, PVTArch] = {
    name: PVTArch(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                  mlp_ratios=(8, 8, 4, 4), depths=depths)
    for name, depths in (('tiny', (2, 2, 2, 2)), ('small', (3, 4, 6, 3)),
                         ('medium', (3, 4, 18, 3)), ('large', (3, 8, 27, 3)))
}

#: the SLAB-Swin presets (Swin's T / S / B structure)
SWIN_ARCHS: Dict[str, SwinArch] = {
    'tiny': SwinArch(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': SwinArch(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': SwinArch(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


#: the DeiT presets (the release's tiny / small, and DeiT's base); ``deit-*`` aliases as in
#: mmpretrain's VisionTransformer
DEIT_ARCHS: Dict[str, DeiTArch] = {
    alias + name: DeiTArch(embed_dims=c, depth=12, num_heads=h, mlp_ratio=4.0)
    for name, c, h in (('tiny', 192, 3), ('small', 384, 6), ('base', 768, 12))
    for alias in ('', 'deit-')
}
