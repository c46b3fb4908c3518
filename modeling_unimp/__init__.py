"""unimp: UniMP as a Hugging Face model. Importing this package registers it with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from .catalogue_cache import UniMPImageCache, score_prompts
from .configuration_unimp import UniMPConfig
from .image_tokenizer_unimp import UniMPImageTokenizer, UniMPImageTokenizerConfig
from .modeling_unimp import (
    UniMPForConditionalGeneration,
    UniMPGatedCrossAttentionBlock,
    UniMPModel,
    UniMPPerceiverResampler,
    UniMPPreTrainedModel,
)
from .processing_unimp import UniMPProcessor, make_image_processor, train_catalogue_tokenizer

AutoConfig.register("unimp", UniMPConfig, exist_ok=True)
# AutoModel maps to the generating class: users expect AutoModel.from_pretrained(...).generate() to work.
AutoModel.register(UniMPConfig, UniMPForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(UniMPConfig, UniMPForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(UniMPConfig, UniMPForConditionalGeneration, exist_ok=True)
AutoProcessor.register(UniMPConfig, UniMPProcessor, exist_ok=True)
AutoConfig.register("unimp_image_tokenizer", UniMPImageTokenizerConfig, exist_ok=True)
AutoModel.register(UniMPImageTokenizerConfig, UniMPImageTokenizer, exist_ok=True)

__all__ = [
    "UniMPConfig",
    "UniMPModel",
    "UniMPPreTrainedModel",
    "UniMPForConditionalGeneration",
    "UniMPGatedCrossAttentionBlock",
    "UniMPPerceiverResampler",
    "UniMPProcessor",
    "UniMPImageCache",
    "UniMPImageTokenizer",
    "UniMPImageTokenizerConfig",
    "make_image_processor",
    "score_prompts",
    "train_catalogue_tokenizer",
]

# The custom pipeline: pipeline("unimp-recommend", model=...) in-library (see pipeline_unimp.py for remote code).
from transformers.pipelines import PIPELINE_REGISTRY  # noqa: E402

from .pipeline_unimp import UniMPRecommendPipeline  # noqa: E402

PIPELINE_REGISTRY.register_pipeline(
    "unimp-recommend", pipeline_class=UniMPRecommendPipeline, pt_model=AutoModelForImageTextToText, type="multimodal"
)
__all__ += ["UniMPRecommendPipeline"]

# pipeline("unimp-generate-image", model=...): history + query -> a generated item image (issue 7).
from .pipeline_image_generation_unimp import UniMPImageGenerationPipeline  # noqa: E402

PIPELINE_REGISTRY.register_pipeline(
    "unimp-generate-image",
    pipeline_class=UniMPImageGenerationPipeline,
    pt_model=AutoModelForImageTextToText,
    type="multimodal",
)
__all__ += ["UniMPImageGenerationPipeline"]
