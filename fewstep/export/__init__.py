"""Exporters (ONNX, OpenVINO, CoreML, TensorRT), quantization and the engine bundle writer.

So far: the text encoder's ONNX export with its `tokenizer.json`; the export issue adds the rest.
"""
