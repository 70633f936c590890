"""What the exporter's metadata tells: model source lines, weight names, the Hugging Face model."""

from __future__ import annotations

import re

_STACK_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \w+\n\s*(.*)')
_LINEAR_CALL = re.compile(r"target=torch\.ops\.aten\.linear\.default\]\(args = \((.*?)\), kwargs")
_SIGNATURE_ENTRY = re.compile(r"^(\w+): (?:PARAMETER|BUFFER|CONSTANT_TENSOR)\w* target='([^']+)'", re.MULTILINE)


def _meta(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _source(node) -> str:
    """"file.py:123: code" of the model line the ONNX node came from (the torch frontend's form)."""
    frames = _STACK_FRAME.findall(_meta(node).get("pkg.torch.onnx.stack_trace", ""))
    if not frames:
        return ""
    path, line, code = frames[-1]
    return f"{path.split('/')[-1]}:{line}: {code.strip()}"


def _where(node) -> str:
    source = _source(node)
    return f"ONNX node '{node.name or node.output[0]}'" + (f" ({source})" if source else "")


def _signature(graph) -> dict[str, str]:
    """Export placeholder name -> state-dict name, from the graph signature the exporter stores."""
    text = _meta(graph).get("pkg.torch.export.ExportedProgram.graph_signature", "")
    return dict(_SIGNATURE_ENTRY.findall(text))


def _hugging_face_model(graph) -> tuple[str, str | None]:
    """(the wrapper's attribute path to the Hugging Face model, "m." for `self.m = model`; its class name),
    from the nodes' `namespace` metadata ("<path>: <class>/<path>: <class>/...")."""
    for node in graph.node:
        for entry in _meta(node).get("namespace", "").split("/"):
            path, _, cls = entry.partition(": ")
            if cls.startswith("transformers."):
                return (f"{path}." if path else ""), cls.rsplit(".", 1)[-1]
    return "", None
