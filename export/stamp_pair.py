"""Which traced nodes are one layer, and how the template layer's nodes pair with a twin
layer's (export/stamp.py): the pairing tells, for every input of the template, whether a
stamped layer reads its own value, a value every layer shares, the residual chain from the
layer before, its graph input or its weight.

Two traces pair this way (`trace_config`):

- a 2-layer trace of a model whose layers are all of one kind: the template is layer 1 and
  its twin layer 0, the layer before it. Layer 0 also holds the values the exporter's
  common-subexpression pass shares with every later layer (the rotary cos/sin, the mask,
  shape values): layer 1 reads them from layer 0 and has no nodes of its own for them, so
  they are skipped when the nodes are paired (`_match_before`), each template node taking
  the first layer-0 node that reads its inputs the same way, in order;
- a 3- or 4-layer trace (the first or last layer of another kind): the template is layer
  1 and its twin layer 2, the interior layer after it, node for node.
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"/model/layers\.(\d+)/")
_IO = re.compile(r"^(past_key_values|present|scr_past|scr_present)\.(\d+)\.(.+)$")


class _CannotStamp(Exception):
    pass


def _fail(what: str):
    raise _CannotStamp(what)


def _io_rename(name: str, layer: int) -> str:
    m = _IO.match(name)
    return f"{m.group(1)}.{layer}.{m.group(3)}" if m else name


def _value(name: str, layer: int) -> str:
    """A template value's name in stamped layer `layer`."""
    return name if _IO.match(name) else f"/model/layers.{layer}/{name}"


def _layers_of_nodes(graph) -> list[int]:
    """Each node's layer (-1: the model's own nodes)."""
    nodes = list(graph.node)
    layer = [int(m.group(1)) if (m := _LAYER.match(n.name)) else None for n in nodes]
    readers: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        for i in n.input:
            readers.setdefault(i, []).append(j)
    outputs = {o.name for o in graph.output}
    for j in reversed(range(len(nodes))):  # readers come later in a topological order
        if layer[j] is not None:
            continue
        seen = {layer[r] for o in nodes[j].output for r in readers.get(o, [])}
        graph_out = any(o in outputs for o in nodes[j].output)
        one = seen.pop() if len(seen) == 1 else None
        layer[j] = one if one is not None and not graph_out else -1
    return layer


class _Stamper:
    """The renaming state of one stamping (see the module docstring). `before`: the twin
    is layer 0 (a 2-layer trace; the template, layer 1, is also the real last layer)."""

    def __init__(self, traced, real_layers: list[int], n_layers: int) -> None:
        self.g = traced.graph
        self.real = real_layers
        self.n = n_layers
        self.before = len(real_layers) == 2
        # the real layers made from the template
        self.stamped = range(1, n_layers if self.before else n_layers - 1)
        self.layer = _layers_of_nodes(self.g)
        nodes = list(self.g.node)
        self.by_layer = {t: [n for n, lay in zip(nodes, self.layer) if lay == t]
                         for t in range(len(real_layers))}
        self.producer = {o: (j, k) for j, n in enumerate(nodes) for k, o in enumerate(n.output)}
        self.inits = {i.name for i in self.g.initializer}
        self.inits_with_recipe: set[str] = set()
        self.own0: set[str] | None = None  # layer 0's values with a template counterpart
        self.untwin: dict[str, str] = {}  # twin value -> template value (set by the pairing)
        # template value -> what the twin's counterpart makes (to find chain inputs)
        self.twin: dict[str, str] = {}
        if self.before:
            self.pairs = _match_before(self)
        else:
            one, two = self.by_layer[1], self.by_layer[2]
            if len(one) != len(two) or any(not _same_form(a, b) for a, b in zip(one, two)):
                raise _CannotStamp("interior layers 1 and 2 differ in form")
            self.pairs = list(zip(one, two))
            self.twin = {o: b.output[k] for a, b in self.pairs for k, o in enumerate(a.output)}
        self.pair = {id(b): a for a, b in self.pairs}  # twin node -> template node

    def made_in(self, value: str) -> int | None:
        p = self.producer.get(value)
        return None if p is None else self.layer[p[0]]

    def classify(self, a, b, k: int) -> tuple[str, str | None]:
        """How template node `a` reads its input k, given its twin `b`: ("own"),
        ("shared"), ("chain", template value it continues), ("io"), ("weight")."""
        x, y = a.input[k], b.input[k]
        if x == "":
            return ("shared", None) if not self.before or y == "" else _fail(f"{a.name} {k}")
        if self.made_in(x) == 1:
            return ("own", None) if self.twin.get(x) == y else _fail(f"{a.name} input {k}")
        if self.before:
            return self._classify_before(a, k, x, y)
        if x == y:
            return "shared", None
        if x in self.inits:
            return "weight", None
        if _IO.match(x) and _io_rename(x, 2) == y:
            return "io", None
        if self.made_in(y) == 1:  # layer 2 reads it from layer 1: the chain
            return "chain", y
        return _fail(f"{a.name} input {k} ({x} / {y})")

    def _classify_before(self, a, k: int, x: str, y: str) -> tuple[str, str | None]:
        """`classify` with the twin in layer 0. While the nodes are being paired (`own0`
        None) a chain input is taken on trust; `_match_before` checks it once all are."""
        own0 = self.own0
        if x == y:  # a value of layer 0 with a template counterpart is never shared
            return ("shared", None) if own0 is None or x not in own0 else _fail(x)
        if x in self.inits:
            return ("weight", None) if y in self.inits else _fail(f"{a.name} input {k}")
        if _IO.match(x):
            return ("io", None) if _io_rename(x, 0) == y else _fail(f"{a.name} input {k}")
        if self.made_in(x) == 0 and self.made_in(y) != 1:
            if own0 is None:
                return "chain", None
            # layer 1 reads layer 0's value x where layer 0 read y from before itself
            via = self.untwin.get(x)
            return ("chain", via) if via is not None and y not in own0 else _fail(x)
        return _fail(f"{a.name} input {k} ({x} / {y})")


def _same_form(a, b) -> bool:
    return a.op_type == b.op_type and len(a.input) == len(b.input)


def _reads_alike(s: _Stamper, a, b) -> bool:
    """Whether layer-0 node `b` can be template node `a`'s counterpart. A node of a layer's
    own modules pairs only with one of its twin's: a model-level node read by layer 0 alone
    counts as layer 0's, and may read alike too (in a float16 trace, the position ids'
    Cast reads alike the first norm's Cast of the residual chain), so taking it would leave
    the real counterpart unpaired (and the 2-layer trace traced again with 3)."""
    if (not _same_form(a, b) or a.domain != b.domain or len(a.output) != len(b.output)
            or list(a.attribute) != list(b.attribute)
            or (_LAYER.match(a.name) is None) != (_LAYER.match(b.name) is None)):
        return False
    try:
        for k in range(len(a.input)):
            s.classify(a, b, k)
    except _CannotStamp:
        return False
    return True


def _match_before(s: _Stamper) -> list[tuple]:
    """(template node, its layer-0 counterpart) for every node of layer 1, in order; the
    layer-0 nodes left over are the shared ones, which must read nothing of layer 0's own."""
    template, earlier = s.by_layer[1], s.by_layer[0]
    pairs, j = [], 0
    for a in template:
        while j < len(earlier) and not _reads_alike(s, a, earlier[j]):
            j += 1
        if j == len(earlier):
            _fail(f"no counterpart in layer 0 for {a.name}")
        b = earlier[j]
        j += 1
        pairs.append((a, b))
        s.twin.update(zip(a.output, b.output))
    s.own0 = {o for _, b in pairs for o in b.output}
    s.untwin = {t: o for o, t in s.twin.items()}
    paired = {id(b) for _, b in pairs}
    for b in earlier:
        if id(b) not in paired and any(i in s.own0 for i in b.input):
            _fail(f"shared node {b.name} reads a value of layer 0's own")
    for a, b in pairs:  # every input again, the chain now checked
        for k in range(len(a.input)):
            s.classify(a, b, k)
    return pairs
