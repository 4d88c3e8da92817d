"""Hook ``vision-model-card``: vision model card + rebuild metadata."""

from __future__ import annotations

import functools
from typing import Any

from ..hub.card import write_vision_card
from ..patching import HOOK_MARK


def _install_vision_model_card() -> None:
    # Why: PEFT's card knows nothing about vision bases (timm and torchvision models have no name_or_path, so
    # not even base_model is written) and nothing records how to rebuild the base. create_or_update_model_card is
    # what PeftModel.save_pretrained (main process only), push_to_hub and Trainer.create_model_card call, so the
    # card and peft_vision_ext.json travel with every save and upload without any upload code of ours.
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, HOOK_MARK, False):
        return

    @functools.wraps(original)
    def create_or_update_model_card(self: Any, output_dir: str) -> Any:
        result = original(self, output_dir)
        write_vision_card(self, output_dir)
        return result

    setattr(create_or_update_model_card, HOOK_MARK, True)
    PeftModel.create_or_update_model_card = create_or_update_model_card
