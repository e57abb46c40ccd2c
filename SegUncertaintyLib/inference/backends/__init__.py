"""Inference backends of card models: one member's forward pass on torch, ONNX Runtime or OpenVINO
(runners), the exported graphs with explicit dropout-mask inputs (export), and the choice of backend and
precision with its accuracy guard (choice)."""
