"""The ONNX frontend's parts; `fdpp.compiler.frontend_onnx` is the entry point and the overview.

- values.py: the two kinds of ONNX value (static, runtime) and conversions of numbers and attributes.
- sizes.py: symbolic sizes over batch and seq (sympy), and their form as the IR's Dims.
- names.py: node and graph metadata: model source lines, weight names, the Hugging Face model.
- importer.py: the walk over the ONNX graph and the state it builds the IR graph in.
- folding.py: evaluating size subgraphs and constants at import time.
- raise_patterns.py: raising the exporter's decompositions (SDPA, DIFF, linear weights) back to IR ops.
- handlers.py: one handler per ONNX op; fused_ops.py: opset 23's fused ops written out.
- op_table.py: ONNX op type -> handler.

These modules import onnx at the top; frontend_onnx imports them only once onnx is known to be installed.
"""
