"""A network's depth as an ordered list of blocks, from the input to the output.

Layer-wise learning-rate decay, freezing the bottom K blocks and gradual unfreezing all need to
know which parameters sit near the input and which near the output. Libraries name that
differently (`encoder.layer.N`, `blocks.N.M`, `layer3.1`, `features.N`), so every network is
cut by one rule. Split the network itself into its children; split every plain container
(exactly a Sequential, ModuleList or ModuleDict, not a subclass such as a conv-norm-activation
triple); and split a module that is mostly one stack, a container of two or more modules of one
class that are not containers themselves (a BERT encoder around its layers). The repeated units
of a network, a transformer layer or a residual block, are none of these, so splitting stops at
them: BERT becomes [embeddings,
layer 0, ..., layer N-1], a ResNet its stem and residual blocks, a torchvision ViT its patch
projection (with the class token and position embedding), encoder layers and final norm.
Parameters a split module holds itself (a class token, a position embedding) join the block of the
embedding they belong to: the one before them, or the next one when they come first. A
normalization layer cut out on its own joins the layer it normalizes, a sibling in the same
parent: the one before it (a stem's convolution and its batch norm, EfficientNet's `conv_stem`
and `bn1`), or the one after it when it comes first (ConvNeXt's downsampling norm and
convolution), as timm groups them; a final norm after a stack of layers (a ViT's `encoder.ln`)
has no such sibling and stays a block of its own. A sibling cut up as a plain sequence of layers
(timm's deep stem `conv1`, a Sequential, before `bn1`) ends in the layer the norm follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Block:
    """One unit of depth: its parameters (named as in the network) and the modules wholly
    inside it, whose train/eval mode follows the block when it is frozen."""

    name: str
    parameters: tuple[tuple[str, nn.Parameter], ...]
    modules: tuple[nn.Module, ...] = ()

    def size(self) -> int:
        return sum(parameter.numel() for _, parameter in self.parameters)


def _size(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _module_block(name: str, module: nn.Module) -> Block:
    prefix = f"{name}." if name else ""
    named = tuple((prefix + key, value) for key, value in module.named_parameters())
    return Block(name or "network", named, (module,))


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
STACK_SHARE = 0.75  # a module at least this much one stack is a wrapper around that stack


def _is_container(module: nn.Module) -> bool:
    return type(module) in CONTAINERS


def _is_stack(module: nn.Module) -> bool:
    children = [child for child in module.children() if _size(child)]
    kinds = {type(child) for child in children}
    # Units of a stack are modules of their own, not containers (a conv-norm-activation triple
    # is a Sequential subclass: three of them inside a block are that block's parts).
    return (
        _is_container(module)
        and len(children) >= 2
        and len(kinds) == 1
        and not isinstance(children[0], CONTAINERS)
    )


def _splittable(module: nn.Module, *, root: bool) -> bool:
    children = [child for child in module.children() if _size(child)]
    if not children:
        return False
    if root or _is_container(module):
        return True
    total = _size(module)
    return any(_is_stack(child) and _size(child) >= STACK_SHARE * total for child in children)


def _split(name: str, module: nn.Module) -> list[tuple[str, nn.Module | Block]]:
    prefix = f"{name}." if name else ""
    own = tuple((prefix + key, value) for key, value in module.named_parameters(recurse=False))
    parts: list[tuple[str, nn.Module | Block]] = []
    if own:
        parts.append((prefix + "params", Block(prefix + "params", own)))
    parts += [
        (prefix + child_name, child)
        for child_name, child in module.named_children()
        if _size(child)
    ]
    return parts


def ordered_blocks(network: nn.Module) -> list[Block]:
    """`network` cut into blocks in forward order (the order its modules were registered in)."""
    pieces: list[tuple[str, nn.Module | Block]] = [("", network)]
    index = 0
    while index < len(pieces):
        name, piece = pieces[index]
        if isinstance(piece, nn.Module) and _splittable(piece, root=piece is network):
            pieces[index : index + 1] = _split(name, piece)  # look at the first part next
        else:
            index += 1
    blocks = [
        piece if isinstance(piece, Block) else _module_block(name, piece)
        for name, piece in pieces
        if (piece.size() if isinstance(piece, Block) else _size(piece))
    ]
    return _merge_norms(_merge_loose_parameters(blocks), network)


NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _is_norm(block: Block) -> bool:
    return len(block.modules) == 1 and isinstance(block.modules[0], NORMS)


def _parent(block: Block) -> str:
    return block.name.rpartition(".")[0]


def _joined(first: Block, second: Block) -> Block:
    return Block(f"{first.name}+{second.name.rpartition('.')[2]}",
                 first.parameters + second.parameters, first.modules + second.modules)


def _follows(block: Block, norm: Block, network: nn.Module) -> bool:
    """Whether `norm` normalizes what `block` computes: `block` is its sibling, or the last part
    of a sibling that is a plain sequence of layers, not a stack of repeated ones (a ViT's
    encoder layers before its final norm) or a module wrapping one."""
    parent = _parent(norm)
    if _parent(block) == parent:
        return True
    prefix = f"{parent}." if parent else ""
    if not block.name.startswith(prefix):
        return False
    sibling = network.get_submodule(prefix + block.name[len(prefix):].split(".")[0])
    return _is_container(sibling) and not _is_stack(sibling)


def _first_in_parent(norm: Block, network: nn.Module) -> bool:
    parent = network.get_submodule(_parent(norm))
    return next(child for child in parent.children() if _size(child)) is norm.modules[0]


def _merge_norms(blocks: list[Block], network: nn.Module) -> list[Block]:
    """Each block that is one normalization layer joined to the layer it normalizes (see
    above)."""
    merged: list[Block] = []
    index = 0
    while index < len(blocks):
        block = blocks[index]
        after = blocks[index + 1] if index + 1 < len(blocks) else None
        if (_is_norm(block) and merged and not _is_norm(merged[-1])
                and _follows(merged[-1], block, network)):
            merged[-1] = _joined(merged[-1], block)
        elif (_is_norm(block) and after is not None and not _is_norm(after)
              and _parent(after) == _parent(block) and _first_in_parent(block, network)):
            merged.append(_joined(block, after))
            index += 1
        else:
            merged.append(block)
        index += 1
    return merged


def _merge_loose_parameters(blocks: list[Block]) -> list[Block]:
    """Parameters a module holds itself (a class token, a position embedding) act at the level of
    the embedding they join: each such block is merged into the block before it, or into the
    next one when it comes first (a ViT's class token joins its patch projection)."""
    merged: list[Block] = []
    pending: list[Block] = []
    for block in blocks:
        if block.modules:
            parameters = tuple(p for loose in pending for p in loose.parameters)
            merged.append(Block(block.name, parameters + block.parameters, block.modules))
            pending = []
        elif merged:
            last = merged[-1]
            merged[-1] = Block(last.name, last.parameters + block.parameters, last.modules)
        else:
            pending.append(block)
    if pending:  # a network of loose parameters only
        merged.append(Block("params", tuple(p for loose in pending for p in loose.parameters)))
    return merged
