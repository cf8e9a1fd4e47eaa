"""Vision-language models for online RL: models and processors, image prompts, masking, sample thumbnails.

vlm.py         load a VLM (processor + model) by reference; `tiny:vlm`; LoRA on the language part only
images.py      image references in dataset rows (paths inside the job's readable data, base64), limits
prompts.py     image rows -> chat prompts with image slots; token ids + pixel inputs per prompt
masking.py     PAPO's image corruption (random / patch / grid), deterministic under a seed
thumbnails.py  small PNG thumbnails of the prompt images for sample events
"""
