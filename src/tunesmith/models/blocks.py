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
embedding they belong to: the one before them, or the next one when they come first.
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
    return _merge_loose_parameters(blocks)


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
