"""Expansion bombs: a few hundred bytes whose object graph is astronomically large as a tree.

``DUP`` and memo ``GET`` let a pickle reference one container many times; ten levels of
"a list holding the previous list ten times" are 10**10 elements to anything that walks the
result as a tree (``repr``, ``json.dumps``, ``==``, a recursive state-dict copy), while the
unpickler itself builds only ten lists. ``logical_size`` counts the result as a tree, each
shared container once per reference, without walking it as one.

Only sharing makes a tree bigger than the graph, so a first pass (``_shared``) walks the
graph level by level with ``gc.get_referents`` (C speed) and stops at the first container
referenced twice; a graph without one is a tree of the size that was built (and memory is
capped while it is built). Only then are sizes memoised per object, leaves counted with
``len`` when a container holds no container, until the count passes the limit. A
reference cycle counts once.
"""

from __future__ import annotations

import gc
import operator
import sys
from itertools import compress
from typing import Any

from trainguard.scan.standins import Made, Persisted

__all__ = ["logical_size"]

_LEAVES = frozenset([str, bytes, int, float, bool, type(None), complex, bytearray])


def _children(obj: Any) -> list[Any]:
    if isinstance(obj, Made):
        out: list[Any] = [obj.maker, *obj.args, *obj.kwargs.values(), *obj.states, *obj.items]
        return out
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    return list(obj)


def _is_node(obj: Any) -> bool:
    return type(obj) in (list, tuple, dict, set, frozenset) or isinstance(obj, Made)


def _flat(obj: Any) -> bool:
    """True when a plain container holds only leaves (checked at C speed)."""
    if type(obj) is dict:
        return set(map(type, obj)) <= _LEAVES and set(map(type, obj.values())) <= _LEAVES
    if type(obj) in (list, tuple, set, frozenset):
        return set(map(type, obj)) <= _LEAVES
    return False


def _shared(root: Any) -> bool:
    """True when some non-empty container is reachable through two references.

    Counted with reference counts, at C speed: once the unpickler and its memo are gone, a
    container that only its parent holds has a count of 3 here (parent, ``found``, the
    argument of ``getrefcount``); a made object one more (its own spread token). Anything
    else holding it only raises the count, so a false "shared" costs time, never a miss.
    """
    nodes_kinds = frozenset([list, tuple, dict, set, frozenset, Made, Persisted])
    node = nodes_kinds.__contains__
    frontier: list[Any] = [root]
    while frontier:
        refs = gc.get_referents(*frontier)
        kinds = set(map(type, refs))
        if kinds.isdisjoint(nodes_kinds):
            return False  # only leaves below: nothing is shared
        nodes = list(compress(refs, map(node, map(type, refs)))) if kinds - nodes_kinds else refs
        del refs
        found, mades = nodes, []
        if Made in kinds or Persisted in kinds:
            is_made = list(map(frozenset([Made, Persisted]).__contains__, map(type, nodes)))
            mades = list(compress(nodes, is_made))
            found = list(compress(nodes, map(operator.not_, is_made)))
        del nodes
        for group, alone in ((found, 3), (mades, 4)):
            if group and max(map(sys.getrefcount, group)) > alone:
                counts = list(map(sys.getrefcount, group))
                if any(c > alone and len(o) for o, c in zip(group, counts, strict=True)):
                    return True
        frontier = found + mades if mades else found
    return False


def logical_size(root: Any, limit: int) -> int:
    """Elements in ``root`` walked as a tree, or the first count above ``limit``."""
    if not _is_node(root) or not _shared(root):
        return 1
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    todo: list[tuple[Any, bool]] = [(root, False)]
    while todo:
        obj, closing = todo.pop()
        oid = id(obj)
        if closing:
            open_.discard(oid)
            total = 1
            for child in _children(obj):
                total += sizes.get(id(child), 1) if _is_node(child) else 1
            if total > limit:
                return total
            sizes[oid] = total
            continue
        if oid in sizes or oid in open_:
            continue
        if _flat(obj):
            n = len(obj) * (2 if type(obj) is dict else 1)
            sizes[oid] = 1 + n
            continue
        open_.add(oid)
        todo.append((obj, True))
        for child in _children(obj):
            if _is_node(child):
                cid = id(child)
                if cid not in sizes and cid not in open_:
                    todo.append((child, False))
    return sizes.get(id(root), 1)
