"""The ONNX file: the classifier as a graph for serving without PyTorch (onnxruntime).

    data = onnx_bytes(Classifier(net, mirror=True), metadata={"classes": json.dumps(classes)})

The graph is fmnist.model.classifier.Classifier exported whole: stored pixels in (INPUT),
class probabilities out (OUTPUT), what the evaluate stage scores, with normalisation and
mirror-averaging inside, so it needs no preprocessing code.
"""

from __future__ import annotations

import contextlib
import io

import torch

from fmnist.core.errors import PipelineError
from fmnist.model.classifier import Classifier

INPUT, OUTPUT = "pixels", "probabilities"
INPUT_DOC = ("uint8 pixels (N, 1, 28, 28), 0-255, a light garment on a dark ground, "
             "as data/prepared stores them (fmnist.serve.images.to_fashion_mnist makes them from a picture)")
OUTPUT_DOC = "float32 class probabilities (N, 10), in the order of the 'classes' metadata"


def onnx_bytes(classifier: Classifier, metadata: dict[str, str]) -> bytes:
    """The classifier as an ONNX model (fp32, any batch size), with `metadata` in its properties.

    torch.export-based exporter (torch.onnx's default, needs onnxscript): it runs
    offline and, stripped of its debugging notes, writes the same bytes for the same
    weights, run after run and wherever the code is checked out.
    """
    try:
        import onnxscript  # noqa: F401 - what the exporter needs; imported here, as only the export does
    except ImportError:
        raise PipelineError("the ONNX export needs onnx and onnxscript, which pyproject.toml lists: "
                            "pip install -e . (make repro does)") from None
    example = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)  # 2, not 1: a batch of 1 would be specialised
    # The exporter prints its progress on stdout: the stage's own line says what was done.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            classifier.eval(), (example,), dynamo=True, verbose=False, external_data=False,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
    model = program.model_proto
    # The exporter annotates every node with the Python stack that made it: absolute paths
    # and line numbers, which would make the bytes differ from one checkout to another.
    for graph in [model.graph, *model.functions]:
        del graph.metadata_props[:]
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    model.doc_string = f"input {INPUT}: {INPUT_DOC}; output {OUTPUT}: {OUTPUT_DOC}"
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()
