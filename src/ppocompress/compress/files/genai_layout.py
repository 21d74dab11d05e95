"""The names in an OpenVINO GenAI folder (see openvino_genai_folder.py), apart from the code
that writes it: a latency worker reads a folder with no torch imported."""

from pathlib import Path

LLM_FOLDER = "openvino"  # a delivered decoder's GenAI folder, inside the delivered model folder
MODEL_FILE = "openvino_model.xml"  # the names LLMPipeline and OVModelForCausalLM look for
TOKENIZER_FILE = "openvino_tokenizer.xml"
DETOKENIZER_FILE = "openvino_detokenizer.xml"


def is_llm_artifact(artifact: Path) -> bool:
    """Whether `artifact` is the model of an LLMPipeline folder (beside its tokenizer IR)."""
    return (Path(artifact).parent / TOKENIZER_FILE).is_file()
