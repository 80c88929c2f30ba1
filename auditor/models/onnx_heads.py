"""Converter-made ONNX classifiers: the network up to its scores, and the vendor's outputs back on export.

`skl2onnx` (and `tf2onnx`) append post-processing to a classifier's network: a `Softmax`, or for a
binary model a `Sigmoid` whose probabilities are built with `Sub`/`Concat`, then `ArgMax`,
`ArrayFeatureExtractor` (class labels), `Reshape`, `Cast` for the label output and `ZipMap` (a list of
{class: probability} maps) for the probabilities. None of that is the model; onnx2torch cannot convert
the `ai.onnx.ml` operators either.

`split_head` recognises those patterns and returns the graph that computes the logits (a binary
model's one score z, its last layer of one output, becomes the two-class logits `[z - z, z]` = `[0, z]`,
so softmax of them is the converter's `[1 - sigmoid(z), sigmoid(z)]`), with `MatMul` + `Add` pairs
fused into `Gemm` so that they convert to `nn.Linear` layers, and a description of the head (kept in
the spec as `provenance.onnx_head`).
`attach_head` puts the same outputs (names, types, class labels, order) back on an exported graph,
computed from the edited logits, so the vendor's consumers read the edited model as they read the
original. Any other post-processing is refused in one line naming the operator.
"""
from __future__ import annotations

import copy

import numpy as np

from ..errors import AuditorError

ML_DOMAIN = "ai.onnx.ml"
HEAD_OPS = ("ZipMap", "ArrayFeatureExtractor", "ArgMax", "Cast", "Reshape", "Identity", "Sub", "Concat",
            "Softmax", "Sigmoid", "Flatten", "Squeeze", "Unsqueeze")
RECOGNISED = ("Softmax, or Sigmoid with Sub/Concat, then ArgMax, ArrayFeatureExtractor, Reshape, Cast, ZipMap "
              "(skl2onnx, tf2onnx classifier heads)")
LOGITS = "logits"


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _const(proto, name: str):
    """The value of an initializer or Constant output named `name`, else None."""
    from onnx import numpy_helper

    for t in proto.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            value = _attr(n, "value")
            return None if value is None else numpy_helper.to_array(value)
    return None


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)


def _resolve_scores(proto, producers: dict, prob: str) -> tuple[str, str] | None:
    """(scores tensor, kind) behind the probabilities tensor `prob`; kind "softmax" or "sigmoid"."""
    t = prob
    while t in producers and producers[t].op_type == "Identity":
        t = producers[t].input[0]
    node = producers.get(t)
    if node is None:
        return None
    if node.op_type == "Softmax":
        axis = _attr(node, "axis", -1 if _opset(proto) >= 13 else 1)
        if axis in (1, -1):
            return node.input[0], "softmax"
    if node.op_type == "Concat" and len(node.input) == 2 and _attr(node, "axis") in (1, -1):
        neg, sig = node.input
        sub, sigmoid = producers.get(neg), producers.get(sig)
        if sub is not None and sigmoid is not None and sub.op_type == "Sub" and sigmoid.op_type == "Sigmoid" \
                and sub.input[1] == sig:
            one = _const(proto, sub.input[0])
            if one is not None and one.size >= 1 and np.all(one == 1):
                return sigmoid.input[0], "sigmoid"
    return None


SIGMOID_ONE = "sigmoid-one"  # a graph whose one output is sigmoid(z) of one score z: audited as one logit


def _own_sigmoid(proto, producers: dict, out) -> tuple[str, str] | None:
    """(z, SIGMOID_ONE) when the graph's one output is Sigmoid(z) of a single column, else None."""
    t = out.name
    while t in producers and producers[t].op_type == "Identity":
        t = producers[t].input[0]
    node = producers.get(t)
    dims = out.type.tensor_type.shape.dim
    one = len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value == 1
    return (node.input[0], SIGMOID_ONE) if node is not None and node.op_type == "Sigmoid" and one else None


def _ancestors(nodes: list, producers: dict, target: str) -> set:
    keep, stack = set(), [target]
    while stack:
        t = stack.pop()
        node = producers.get(t)
        if node is None or id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
    return keep


def _output_kind(out) -> str:
    which = out.type.WhichOneof("value")
    if which == "sequence_type":
        return "zipmap"
    if which != "tensor_type":
        return "other"
    return "probabilities" if out.type.tensor_type.elem_type in (1, 11) else "label"  # FLOAT, DOUBLE


def keep_logits_output(proto, choice=None):
    """A plain network (no converter head) with several float outputs, e.g. a PyTorch model that returns
    (logits, features): the graph of its logits output alone, and the names of the outputs left out.
    The logits are `choice` (an output's name or index), else the output named "logits", else the first.
    Any other graph comes back as it is, with no names."""
    g = proto.graph
    if len(g.output) < 2 or any(n.domain == ML_DOMAIN for n in g.node) or \
            any(_output_kind(o) != "probabilities" for o in g.output):
        return proto, []
    names = [o.name for o in g.output]
    if choice is not None:
        if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(names):
            keep = names[choice]
        elif choice in names:
            keep = choice
        else:
            raise AuditorError(f'"output" {choice!r} in the spec\'s "arch" is not an output of the ONNX graph; '
                               f"its outputs: {names}")
    else:
        keep = next((n for n in names if n.lower() == LOGITS), names[0])
    producers = {o: n for n in g.node for o in n.output}
    ids = _ancestors(list(g.node), producers, keep)
    out = copy.deepcopy(proto)  # the same nodes in the same order
    nodes = [n for n, original in zip(out.graph.node, g.node) if id(original) in ids]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept_out = [o for o in out.graph.output if o.name == keep]
    del out.graph.output[:]
    out.graph.output.extend(kept_out)
    return out, [n for n in names if n != keep]


def split_head(proto, name: str):
    """(graph computing the logits, head description) or (proto, None) when there is no head."""
    g = proto.graph
    has_ml = any(n.domain == ML_DOMAIN for n in g.node)
    producers = {o: n for n in g.node for o in n.output}
    own_head, found = False, None
    if not has_ml and len(g.output) == 1:  # a plain graph: its one output is taken as the logits, unless it
        out = g.output[0]  # is the network's own final Softmax, or Sigmoid of one score (torch.softmax/sigmoid)
        found = _resolve_scores(proto, producers, out.name) if _output_kind(out) == "probabilities" else None
        if found is None and _output_kind(out) == "probabilities":
            found = _own_sigmoid(proto, producers, out)
        if not found or found[1] not in ("softmax", SIGMOID_ONE) or not _ancestors(list(g.node), producers, found[0]):
            return proto, None
        own_head = True
    candidates = [n.input[0] for n in g.node if n.op_type == "ZipMap"]
    candidates += [o.name for o in g.output if _output_kind(o) == "probabilities"]
    for prob in candidates if not own_head else ():
        found = _resolve_scores(proto, producers, prob)
        if found:
            break
    if not found:
        prob = candidates[0] if candidates else g.output[0].name
        t = prob
        while t in producers and producers[t].op_type == "Identity":
            t = producers[t].input[0]
        op = producers[t].op_type if t in producers else "(a graph input)"
        raise AuditorError(f"{name}: its probabilities come from operator {op!r}, not a recognised classifier "
                           f"head; recognised: {RECOGNISED}")
    scores, kind = found
    net_ids = _ancestors(list(g.node), producers, scores)
    net = [n for n in g.node if id(n) in net_ids]
    head = [n for n in g.node if id(n) not in net_ids]
    for n in net:
        if n.domain == ML_DOMAIN:
            raise AuditorError(f"{name}: operator {n.domain}.{n.op_type} computes the model itself; the auditor "
                               "converts networks of standard ONNX operators with a classifier head "
                               f"({RECOGNISED})")
    inputs = {i.name for i in g.input} - {t.name for t in g.initializer}
    for n in head:
        if n.op_type not in HEAD_OPS or n.domain not in ("", "ai.onnx", ML_DOMAIN):
            raise AuditorError(f"{name}: post-processing operator {n.op_type!r} is not one of the recognised "
                               f"classifier heads; recognised: {RECOGNISED}")
        if any(i in inputs for i in n.input):
            raise AuditorError(f"{name}: post-processing operator {n.op_type!r} reads the model's input; "
                               f"recognised heads read only the scores: {RECOGNISED}")
    classes, class_type = _classes(proto, head)
    outputs = []
    for o in g.output:
        k = _output_kind(o)
        if k == "other":
            raise AuditorError(f"{name}: output {o.name!r} is neither a label, probabilities nor a ZipMap")
        outputs.append({"name": o.name, "kind": k,
                        "elem_type": int(o.type.tensor_type.elem_type) if k != "zipmap" else None})
    if any(o["kind"] in ("label", "zipmap") for o in outputs) and not classes:
        raise AuditorError(f"{name}: its label output has no class labels (ArrayFeatureExtractor or ZipMap)")
    net_proto = _network(proto, net, scores, kind, name)
    real = [i for i in g.input if i.name in inputs]
    desc = {"recognised": ("the network's own final Sigmoid of one score z: its probability is sigmoid(z), z "
                           "audited as one logit" if kind == SIGMOID_ONE else
                           "the network's own final Softmax: its probabilities are the softmax of the logits "
                           "audited") if own_head else
            "classifier post-processing of a converter (skl2onnx / tf2onnx)",
            "operators": sorted({n.op_type for n in head}), "scores": kind,
            "audited": ("the network up to its one sigmoid score z, as two-class logits [0, z]" if kind == "sigmoid"
                        else "the network up to its softmax logits"),
            "input": real[0].name if real else "input", "outputs": outputs, "classes": classes,
            "class_type": class_type,
            "export": "edited models keep these outputs (same names, types and class labels)"}
    return net_proto, desc


def _classes(proto, head: list) -> tuple[list, str]:
    for n in head:
        if n.op_type == "ZipMap":
            ints, strings = _attr(n, "classlabels_int64s"), _attr(n, "classlabels_strings")
            if ints:
                return [int(v) for v in ints], "int64"
            if strings:
                return [v.decode() if isinstance(v, bytes) else str(v) for v in strings], "string"
    for n in head:
        if n.op_type == "ArrayFeatureExtractor":
            arr = _const(proto, n.input[0])
            if arr is not None:
                if arr.dtype.kind in "iu":
                    return [int(v) for v in arr.ravel()], "int64"
                return [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel()], "string"
    return [], "int64"


def _network(proto, nodes: list, scores: str, kind: str, name: str):
    """A model of `nodes` with output `logits`: Gemm for MatMul+Add, the input Cast dropped, [0, z] for a sigmoid."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    consumers: dict = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in g.initializer}
    new_inits: dict = {}
    rename: dict = {}
    real = [i for i in g.input if i.name not in inits]
    out_nodes = []
    skip = set()
    for n in nodes:
        if id(n) in skip:
            continue
        if n.op_type == "Cast" and real and n.input[0] == real[0].name and \
                _attr(n, "to") == real[0].type.tensor_type.elem_type:
            rename[n.output[0]] = n.input[0]  # a cast to the type it already has
            continue
        if n.op_type == "MatMul" and _const(proto, n.input[1]) is not None:
            w = _const(proto, n.input[1])
            users = consumers.get(n.output[0], [])
            add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
            b = None
            if add is not None:
                other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
                b = _const(proto, other)
            if w.ndim == 2 and b is not None and b.size == w.shape[1]:
                skip.add(id(add))
                out_nodes.append(("gemm", n.input[0], w.astype(np.float32), b.reshape(-1).astype(np.float32),
                                  add.output[0]))
                continue
        out_nodes.append(("node", n))
    gemms = [i for i, x in enumerate(out_nodes) if x[0] == "gemm"]
    built = []
    layer = 0
    final_scores = scores
    for i, x in enumerate(out_nodes):
        if x[0] == "gemm":
            _, inp, w, b, out = x
            last = i == gemms[-1] and out == scores
            layer += 1
            lname = "out" if last else f"fc{layer}"
            wn, bn = f"{lname}.weight", f"{lname}.bias"
            new_inits[wn] = numpy_helper.from_array(np.ascontiguousarray(w.T), wn)
            new_inits[bn] = numpy_helper.from_array(b, bn)
            built.append(helper.make_node("Gemm", [rename.get(inp, inp), wn, bn], [out], name=f"{lname}/Gemm",
                                          transB=1))
        else:
            n = x[1]
            copy_node = helper.make_node(n.op_type, [rename.get(t, t) for t in n.input], list(n.output),
                                         name=n.name or None, domain=n.domain or None)
            copy_node.attribute.extend(n.attribute)
            if n.op_type == "Relu" and layer:
                copy_node.name = f"act{layer}/Relu"
            built.append(copy_node)
            for t in n.input:
                if t in inits:
                    new_inits[t] = inits[t]
    if kind == "sigmoid":  # one score z: the logits [z - z, z] (no row of zero weights, which would count as pruned)
        built.append(helper.make_node("Sub", [scores, scores], ["auditor_zero"], name="zero/Sub"))
        built.append(helper.make_node("Concat", ["auditor_zero", scores], [LOGITS], name="logits/Concat", axis=1))
        final_scores = LOGITS
    elif final_scores != LOGITS:
        last = next((n for n in reversed(built) if scores in n.output), None)
        if last is not None and sum(scores in n.input for n in built) == 0:  # the scores' own node writes the
            last.output[list(last.output).index(scores)] = LOGITS  # logits: no Identity, which would stand as a
        else:  # layer of its own in the converted model (an MLP then no longer reads as one)
            built.append(helper.make_node("Identity", [scores], [LOGITS], name="logits/Identity"))
    real = [copy.deepcopy(i) for i in real]
    dims = real[0].type.tensor_type.shape.dim if real else []
    if dims and not dims[0].HasField("dim_value") and not dims[0].dim_param:
        dims[0].dim_param = "N"  # a converter's [None, d]: a named batch dimension, so shapes can be inferred
    batch = (dims[0].dim_param or dims[0].dim_value) if dims else "N"
    width = None
    last = next((n for n in reversed(built) if LOGITS in n.output or scores in n.output), None)
    if last is not None and last.op_type == "Gemm":
        width = int(numpy_helper.to_array(new_inits[last.input[1]]).shape[0])
    elif final_scores == LOGITS and kind == "sigmoid":
        width = 2
    out_vi = helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, width])
    graph = helper.make_graph(built, g.name or "network", real, [out_vi], list(new_inits.values()))
    model = helper.make_model(graph, opset_imports=[o for o in proto.opset_import if o.domain in ("", "ai.onnx")],
                              ir_version=proto.ir_version)
    model.metadata_props.extend(proto.metadata_props)
    try:
        import onnx

        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        raise AuditorError(f"{name}: the network before its classifier head is not a valid graph on its own: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    return model


def attach_head(proto, head: dict):
    """Replace the `logits` output of an exported graph by the vendor's outputs, computed from the logits."""
    from onnx import TensorProto, helper, numpy_helper

    g = proto.graph
    outs = head["outputs"]
    prob = next((o["name"] for o in outs if o["kind"] == "probabilities"), "auditor_probabilities")
    nodes = [helper.make_node("Sigmoid", [LOGITS], [prob], name="head/Sigmoid") if head.get("scores") == SIGMOID_ONE
             else helper.make_node("Softmax", [LOGITS], [prob], name="head/Softmax", axis=1)]
    string = head.get("class_type") == "string"
    if any(o["kind"] == "label" for o in outs):
        classes = np.array(head["classes"], dtype=object if string else np.int64)
        g.initializer.append(numpy_helper.from_array(classes, "auditor_classes"))
        g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "auditor_flat"))
        nodes += [helper.make_node("ArgMax", [prob], ["auditor_argmax"], name="head/ArgMax", axis=1),
                  helper.make_node("ArrayFeatureExtractor", ["auditor_classes", "auditor_argmax"], ["auditor_label"],
                                   name="head/ArrayFeatureExtractor", domain=ML_DOMAIN),
                  helper.make_node("Reshape", ["auditor_label", "auditor_flat"], ["auditor_label_flat"],
                                   name="head/Reshape")]
    vis = []
    for o in outs:
        if o["kind"] == "label":
            nodes.append(helper.make_node("Cast", ["auditor_label_flat"], [o["name"]], name=f"head/Cast_{o['name']}",
                                          to=int(o["elem_type"])))
            vis.append(helper.make_tensor_value_info(o["name"], int(o["elem_type"]), ["N"]))
        elif o["kind"] == "probabilities":
            width = 1 if head.get("scores") == SIGMOID_ONE else (len(head["classes"]) or None)
            vis.append(helper.make_tensor_value_info(o["name"], TensorProto.FLOAT, ["N", width]))
        else:
            labels = {"classlabels_strings": [str(c) for c in head["classes"]]} if string else \
                {"classlabels_int64s": [int(c) for c in head["classes"]]}
            nodes.append(helper.make_node("ZipMap", [prob], [o["name"]], name="head/ZipMap", domain=ML_DOMAIN,
                                          **labels))
            key = TensorProto.STRING if string else TensorProto.INT64
            map_type = helper.make_map_type_proto(key, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
            vis.append(helper.make_value_info(o["name"], helper.make_sequence_type_proto(map_type)))
    g.node.extend(nodes)
    kept = [o for o in g.output if o.name != LOGITS]
    del g.output[:]
    g.output.extend(kept + vis)
    if not any(o.domain == ML_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(ML_DOMAIN, 1))
    return proto


def head_max_diff(model, path, shape: list[int], head: dict, n: int = 64, seed: int = 0) -> float | None:
    """Largest |probability difference| between onnxruntime's vendor outputs and softmax of `model`'s logits
    (a label that is not the class of the largest probability counts as 1); None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return None
    import torch

    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        out = model.cpu().eval()(x).double()
        want = (torch.sigmoid(out) if head.get("scores") == SIGMOID_ONE else torch.softmax(out, dim=1)).numpy()
    worst = 0.0
    for o, value in zip(head["outputs"], got):
        if o["kind"] == "probabilities":
            worst = max(worst, float(np.abs(np.asarray(value, float) - want).max()))
        elif o["kind"] == "zipmap":
            arr = np.array([[m[c] for c in head["classes"]] for m in value], float)
            worst = max(worst, float(np.abs(arr - want).max()))
        else:
            labels = [str(v.decode() if isinstance(v, bytes) else v) for v in np.asarray(value).ravel()]
            ordered = np.sort(want, axis=1)
            clear = ordered[:, -1] - ordered[:, -2] > 1e-5  # a near tie may go either way in float32
            top = np.asarray(want).argmax(1)
            if len(labels) != len(top) or any(c and lab != str(head["classes"][i])
                                               for c, lab, i in zip(clear, labels, top)):
                worst = max(worst, 1.0)
    return worst
