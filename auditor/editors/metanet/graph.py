"""An MLP read as a graph: neurons are nodes, weights are edges.

Node order per model: the inputs, then each hidden layer, then the outputs. Edges of layer l
(weight `W_l` of shape (n_l, n_{l-1})) come in row-major order, so the edge outputs of a
metanetwork reshape straight back into `W_l`. Hidden neurons carry no identity of their own
(only their layer), so anything computed per node and per edge and aggregated by sums or means
is equivariant to permuting the hidden neurons of a layer; inputs and outputs keep their
positions (feature j, class c), which do have a meaning.

Node features (4): bias, mean and standard deviation of the neuron's pre-activation on a
reference batch, and the share of rows where it is positive (inputs: value mean, std, share
non-zero). Edge features (3): w, w * std(source activation), w * mean(source activation).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from ...errors import AuditorError

NODE_FEATURES = 4
EDGE_FEATURES = 3


def not_an_mlp(model: nn.Module) -> str | None:
    """Why no learned editor can be trained for `model` (populations are of plain MLPs), or None."""
    try:
        mlp_layers(model)
    except AuditorError as exc:
        return f"{exc}; learned editors are trained on populations of such MLPs, so none can be trained for this model"
    return None


def mlp_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, Linear) of an MLP that computes Linear -> ReLU -> ... -> Linear, else an AuditorError
    that names what it found. An `nn.Sequential` is read by its children; any other module (a user's
    own class, e.g. `fc2(relu(fc1(x)))`) by its torch.fx trace, which must be one chain of those steps
    (Flatten, Dropout and Identity are passed over: in eval mode they change nothing of a row)."""
    if not isinstance(model, nn.Sequential):
        return _chain(_traced_steps(model))
    try:
        return _chain([(name, mod) for name, mod in model.named_children() if not isinstance(mod, _PASSED)])
    except AuditorError as exc:  # nested blocks: read the trace, and say what the children show if that fails too
        try:
            return _chain(_traced_steps(model))
        except AuditorError:
            raise exc from None


def _chain(steps: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Linear]]:
    layers, expect_linear = [], True
    for name, mod in steps:
        if isinstance(mod, nn.Linear) and expect_linear:
            layers.append((name, mod))
            expect_linear = False
        elif isinstance(mod, nn.ReLU) and not expect_linear:
            expect_linear = True
        else:
            raise AuditorError(f"the metanetwork reads MLPs of Linear and ReLU layers; layer {name!r} is "
                               f"{type(mod).__name__}")
    if not layers or expect_linear:
        raise AuditorError("the metanetwork reads MLPs that end in a Linear layer")
    for (_, a), (_, b) in zip(layers, layers[1:]):
        if a.out_features != b.in_features:
            raise AuditorError("the MLP's layer sizes do not chain")
    return layers


_PASSED = (nn.Flatten, nn.Dropout, nn.Identity)
_RELU_CALLS = {torch.relu, nn.functional.relu, "relu"}
_PASSED_CALLS = {torch.flatten, "flatten", nn.functional.dropout, "contiguous"}


def _traced_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules a non-Sequential model applies, in order, when its torch.fx trace is one chain from
    its input to its output (a functional relu counts as a ReLU layer); else an AuditorError."""
    import torch.fx

    from ...models.custom import reads_single_logit

    name = type(model).__name__
    if reads_single_logit(model):  # the model's own forward (one logit), not the [0, z] reading around it
        model = copy.copy(model)
        model.__class__ = type(model).__mro__[1]
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any trace failure: the model is not read as an MLP
        raise AuditorError(f"the metanetwork reads MLPs; {name}'s forward could not be traced to check that it "
                           f"is one ({type(exc).__name__})") from None
    modules = dict(model.named_modules())
    steps: list[tuple[str, nn.Module]] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                raise AuditorError(f"the metanetwork reads MLPs of one input; {name}'s forward takes several")
            previous = node
            continue
        if node.op == "output":
            if node.args[0] is not previous:
                raise AuditorError(f"the metanetwork reads MLPs that return their last layer's output; {name} "
                                   "returns something else")
            break
        inputs = [a for a in node.all_input_nodes]
        if inputs != [previous]:
            raise AuditorError(f"the metanetwork reads MLPs whose layers run one after another; in {name}, "
                               f"{node.name!r} reads {[a.name for a in inputs]} (a skip or branch)")
        if node.op == "call_module":
            mod = modules[node.target]
            if not isinstance(mod, _PASSED):
                steps.append((node.target, mod))
        elif node.op in ("call_function", "call_method") and node.target in _RELU_CALLS:
            steps.append((node.name, nn.ReLU()))
        elif node.op in ("call_function", "call_method") and node.target in _PASSED_CALLS:
            pass
        else:
            what = getattr(node.target, "__name__", str(node.target))
            raise AuditorError(f"the metanetwork reads MLPs of Linear and ReLU layers; {name} applies {what!r}")
        previous = node
    return steps


@dataclass(frozen=True)
class Structure:
    """Index structure of one architecture (cached per layer sizes)."""

    sizes: tuple[int, ...]  # (inputs, hidden..., outputs)
    src: torch.Tensor
    dst: torch.Tensor
    node_offsets: tuple[int, ...]
    edge_offsets: tuple[int, ...]
    node_layer: torch.Tensor
    edge_layer: torch.Tensor

    @property
    def depth(self) -> int:  # number of Linear layers
        return len(self.sizes) - 1

    @property
    def n_nodes(self) -> int:
        return self.node_offsets[-1]

    @property
    def n_edges(self) -> int:
        return self.edge_offsets[-1]


@lru_cache(maxsize=256)
def structure(sizes: tuple[int, ...]) -> Structure:
    node_off = [0]
    for n in sizes:
        node_off.append(node_off[-1] + n)
    src, dst, edge_off, edge_layer = [], [], [0], []
    for li in range(1, len(sizes)):
        n_in, n_out = sizes[li - 1], sizes[li]
        src.append(node_off[li - 1] + torch.arange(n_in).repeat(n_out))
        dst.append(node_off[li] + torch.arange(n_out).repeat_interleave(n_in))
        edge_off.append(edge_off[-1] + n_in * n_out)
        edge_layer.append(torch.full((n_in * n_out,), li, dtype=torch.long))
    node_layer = torch.cat([torch.full((n,), li, dtype=torch.long) for li, n in enumerate(sizes)])
    return Structure(tuple(sizes), torch.cat(src), torch.cat(dst), tuple(node_off), tuple(edge_off),
                     node_layer, torch.cat(edge_layer))


def position_ids(st: Structure, n_inputs: int, n_classes: int, max_depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embedding ids: input j -> j; class c -> n_inputs + c; a hidden neuron of layer l in a network
    of depth L -> n_inputs + n_classes + l * (max_depth + 1) + (L - l). Edges of layer l -> l * (max_depth
    + 1) + (L - l). Hidden neurons of one layer share an id (permutation symmetry)."""
    L = st.depth
    node = torch.empty(st.n_nodes, dtype=torch.long)
    node[:st.sizes[0]] = torch.arange(st.sizes[0])
    for li in range(1, L):
        node[st.node_offsets[li]:st.node_offsets[li + 1]] = n_inputs + n_classes + li * (max_depth + 1) + (L - li)
    node[st.node_offsets[L]:] = n_inputs + torch.arange(st.sizes[-1])
    edge = st.edge_layer * (max_depth + 1) + (L - st.edge_layer)
    return node, edge


@dataclass
class Member:
    """One model prepared for the metanetwork: its structure, weights and reference statistics."""

    names: list[str]  # Linear layer names in forward order (fc1, fc2, ..., out)
    st: Structure
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    node_x: torch.Tensor  # (n_nodes, NODE_FEATURES)
    edge_x: torch.Tensor  # (n_edges, EDGE_FEATURES)
    act_mean: list[torch.Tensor]  # mean of each layer's input activation (inputs, post-ReLU hidden)
    act_std: list[torch.Tensor]
    X_ref: torch.Tensor | None = None  # the reference rows
    pre_mean: list[torch.Tensor] | None = None  # mean and std of each layer's pre-activation on them
    pre_std: list[torch.Tensor] | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        return self.st.sizes


def prepare(model: nn.Module, X_ref: torch.Tensor, probes=()) -> Member:
    """Read `model` (an MLP) as a graph with statistics from the reference rows `X_ref`.

    `probes`: functions logits -> scalar loss (e.g. a fairness gap on the reference rows); the
    gradient of each with respect to every weight and bias, divided by its root mean square over
    the model, becomes one more edge and node feature (what a gradient step would change)."""
    layers = mlp_layers(model)
    sizes = (layers[0][1].in_features, *[m.out_features for _, m in layers])
    st = structure(sizes)
    dev = layers[0][1].weight.device
    X_ref = X_ref.to(dev, torch.float32)
    weights = [m.weight.detach().float() for _, m in layers]
    biases = [m.bias.detach().float() if m.bias is not None else torch.zeros(m.out_features, device=dev)
              for _, m in layers]
    with torch.no_grad():
        h = X_ref
        node_rows = [torch.stack([torch.zeros(sizes[0], device=dev), h.mean(0), h.std(0),
                                  (h != 0).float().mean(0)], 1)]
        act_mean, act_std, pre_mean, pre_std = [], [], [], []
        for i, (W, b) in enumerate(zip(weights, biases)):
            act_mean.append(h.mean(0))
            act_std.append(h.std(0))
            pre = h @ W.T + b
            pre_mean.append(pre.mean(0))
            pre_std.append(pre.std(0))
            node_rows.append(torch.stack([b, pre.mean(0), pre.std(0), (pre > 0).float().mean(0)], 1))
            h = pre.relu() if i < len(weights) - 1 else pre
        edge_rows = [torch.stack([W.reshape(-1), (W * s).reshape(-1), (W * m).reshape(-1)], 1)
                     for W, m, s in zip(weights, act_mean, act_std)]
    node_x, edge_x = torch.cat(node_rows), torch.cat(edge_rows)
    if probes:
        node_g, edge_g = [], []
        for probe in probes:
            ps = [t.clone().requires_grad_(True) for t in (*weights, *biases)]
            Ws, bs = ps[:len(weights)], ps[len(weights):]
            with torch.enable_grad():
                h = X_ref
                for i, (W, b) in enumerate(zip(Ws, bs)):
                    h = h @ W.T + b
                    if i < len(Ws) - 1:
                        h = h.relu()
                grads = torch.autograd.grad(probe(h), ps, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ps, grads)]
            gw = torch.cat([g.reshape(-1) for g in grads[:len(weights)]])
            gb = torch.cat([torch.zeros(sizes[0], device=dev)] + list(grads[len(weights):]))
            rms = torch.cat([gw, gb]).pow(2).mean().sqrt().clamp_min(1e-12)
            edge_g.append(gw / rms)
            node_g.append(gb / rms)
        node_x = torch.cat([node_x, torch.stack(node_g, 1)], 1)
        edge_x = torch.cat([edge_x, torch.stack(edge_g, 1)], 1)
    return Member([n for n, _ in layers], st, weights, biases, node_x.detach(), edge_x.detach(), act_mean, act_std,
                  X_ref, pre_mean, pre_std)


@dataclass
class GraphBatch:
    """Several members as one disjoint graph (node and edge tensors concatenated)."""

    members: list[Member]
    node_x: torch.Tensor
    edge_x: torch.Tensor
    node_pos: torch.Tensor
    edge_pos: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor
    inv_deg_in: torch.Tensor  # 1 / number of incoming edges (0 for inputs), shape (N, 1)
    inv_deg_out: torch.Tensor
    node_offsets: list[int] = field(default_factory=list)
    edge_offsets: list[int] = field(default_factory=list)
    node_member: torch.Tensor | None = None
    edge_member: torch.Tensor | None = None

    @property
    def n_members(self) -> int:
        return len(self.members)


def batch(members: list[Member], n_inputs: int, n_classes: int, max_depth: int) -> GraphBatch:
    node_x, edge_x, node_pos, edge_pos, src, dst, din, dout = [], [], [], [], [], [], [], []
    node_off, edge_off, nm, em = [0], [0], [], []
    for b, m in enumerate(members):
        st = m.st
        if st.depth > max_depth:
            raise AuditorError(f"the MLP has {st.depth} layers; this metanetwork reads at most {max_depth}")
        npos, epos = position_ids(st, n_inputs, n_classes, max_depth)
        dev = m.node_x.device
        node_x.append(m.node_x)
        edge_x.append(m.edge_x)
        node_pos.append(npos.to(dev))
        edge_pos.append(epos.to(dev))
        src.append(st.src.to(dev) + node_off[-1])
        dst.append(st.dst.to(dev) + node_off[-1])
        sizes = st.sizes
        deg_in = torch.cat([torch.zeros(sizes[0])] + [torch.full((n,), float(sizes[li]))
                                                      for li, n in enumerate(sizes[1:])])
        deg_out = torch.cat([torch.full((n,), float(sizes[li + 1])) for li, n in enumerate(sizes[:-1])]
                            + [torch.zeros(sizes[-1])])
        din.append(deg_in)
        dout.append(deg_out)
        nm.append(torch.full((st.n_nodes,), b, dtype=torch.long))
        em.append(torch.full((st.n_edges,), b, dtype=torch.long))
        node_off.append(node_off[-1] + st.n_nodes)
        edge_off.append(edge_off[-1] + st.n_edges)
    dev = members[0].node_x.device
    inv = lambda d: torch.where(d > 0, 1.0 / d.clamp_min(1), torch.zeros_like(d)).unsqueeze(1).to(dev)
    return GraphBatch(members, torch.cat(node_x), torch.cat(edge_x), torch.cat(node_pos), torch.cat(edge_pos),
                      torch.cat(src), torch.cat(dst), inv(torch.cat(din)), inv(torch.cat(dout)),
                      node_off, edge_off, torch.cat(nm).to(dev), torch.cat(em).to(dev))
