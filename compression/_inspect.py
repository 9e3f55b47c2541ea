"""What a converted LiteRT model holds: its ops and the dtypes of its tensors.

Everything is read through the on-device runtime (``ai_edge_litert``), with the default
delegates off, so the graph is the flatbuffer's own and not a delegate's rewrite.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


@dataclass(frozen=True)
class Node:
    """One op of the main subgraph, in execution order."""

    index: int
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """The main subgraph of a model: its ops, and for each tensor its dtype and constness."""

    nodes: tuple[Node, ...]
    dtypes: dict[int, str]
    constants: frozenset[int]
    sparse: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class ModelInfo:
    """Summary of a converted model.

    Attributes:
        ops: op name -> number of nodes of the main subgraph.
        weight_dtypes: dtype name -> number of constant elements (weights, biases,
            shape constants) of that dtype.
        activation_dtypes: dtype name -> number of runtime tensors of that dtype
            (op outputs; what the kernels compute in).
        input_dtypes, output_dtypes: signature input/output name -> dtype name.
        sparse_tensors: number of constant tensors stored in the TFLite sparse format.
    """

    ops: dict[str, int]
    weight_dtypes: dict[str, int]
    activation_dtypes: dict[str, int]
    input_dtypes: dict[str, str]
    output_dtypes: dict[str, str]
    sparse_tensors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "ops": dict(self.ops),
            "weight_dtypes": dict(self.weight_dtypes),
            "activation_dtypes": dict(self.activation_dtypes),
            "input_dtypes": dict(self.input_dtypes),
            "output_dtypes": dict(self.output_dtypes),
            "sparse_tensors": self.sparse_tensors,
        }


def load_interpreter(model: bytes, *, delegates: bool) -> Interpreter:
    """An allocated interpreter; ``delegates=False`` keeps XNNPACK out of the graph."""
    resolver = (
        OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(model_content=model, experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def read_graph(model: bytes) -> Graph:
    """The main subgraph of ``model`` (flatbuffer bytes) without any delegate applied."""
    interpreter = load_interpreter(model, delegates=False)
    nodes = tuple(
        Node(
            index=int(op["index"]),
            op=str(op["op_name"]),
            inputs=tuple(int(t) for t in op["inputs"] if t >= 0),
            outputs=tuple(int(t) for t in op["outputs"] if t >= 0),
        )
        for op in interpreter._get_ops_details()
    )
    details = interpreter.get_tensor_details()
    dtypes = {int(d["index"]): np.dtype(d["dtype"]).name for d in details}
    produced = {t for node in nodes for t in node.outputs}
    graph_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    consumed = {t for node in nodes for t in node.inputs}
    constants = frozenset(consumed - produced - graph_inputs)
    sparse = frozenset(
        int(d["index"])
        for d in details
        if d.get("sparsity_parameters") and int(d["index"]) in constants
    )
    return Graph(nodes=nodes, dtypes=dtypes, constants=constants, sparse=sparse)


def inspect_model(model: bytes) -> ModelInfo:
    """Ops and tensor dtypes of ``model`` (LiteRT flatbuffer bytes)."""
    graph = read_graph(model)
    interpreter = load_interpreter(model, delegates=False)
    sizes = {int(d["index"]): int(np.prod(d["shape"])) for d in interpreter.get_tensor_details()}
    weights: Counter[str] = Counter()
    for tensor in graph.constants:
        weights[graph.dtypes[tensor]] += sizes[tensor]
    activations: Counter[str] = Counter(
        graph.dtypes[t] for node in graph.nodes for t in node.outputs
    )
    runner = interpreter.get_signature_runner()
    return ModelInfo(
        ops=dict(Counter(node.op for node in graph.nodes)),
        weight_dtypes=dict(weights),
        activation_dtypes=dict(activations),
        input_dtypes={
            name: np.dtype(d["dtype"]).name for name, d in runner.get_input_details().items()
        },
        output_dtypes={
            name: np.dtype(d["dtype"]).name for name, d in runner.get_output_details().items()
        },
        sparse_tensors=len(graph.sparse),
    )
