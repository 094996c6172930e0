"""How a trained model is judged and used: classifier, sampling, scores and the ONNX export."""
