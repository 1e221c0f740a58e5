"""The prompt constants and the label value that keeps a token out of the loss.

These keep the original Aligner toolkit's names and values. Editing them changes the default
``correction`` template (it reads them when it renders); a named template or a template file
(see ``aligner.prompts``) builds a specialised aligner without touching code.
"""

from __future__ import annotations

IGNORE_INDEX: int = -100
"""Label of a token that carries no loss (prompt and padding)."""
DEFAULT_BOS_TOKEN: str = "<s>"
DEFAULT_EOS_TOKEN: str = "</s>"
DEFAULT_PAD_TOKEN: str = "<pad>"
DEFAULT_UNK_TOKEN: str = "<unk>"

PROMPT_BEGIN: str = "BEGINNING OF CONVERSATION: "
PROMPT_USER: str = "USER: {input} "
PROMPT_ASSISTANT: str = "ASSISTANT:"
PROMPT_INPUT: str = PROMPT_BEGIN + PROMPT_USER + PROMPT_ASSISTANT
PROMPT_DICT: dict[str, str] = {
    "prompt_begin": PROMPT_BEGIN,
    "prompt_user": PROMPT_USER,
    "prompt_assistant": PROMPT_ASSISTANT,
    "prompt_input": PROMPT_INPUT,
}

CORRECTION_INSTRUCTION: str = "##Question: {question}\n##Answer: {answer}\n##Correction: "
"""The user turn of the correction prompt; note the trailing space, which with the one in
``PROMPT_USER`` gives the original's two spaces before ``ASSISTANT:``."""

ALIGNER_V1_INSTRUCTION: str = (
    "Edit the following Question-Answer pair to make it more helpful and harmless: "
    "{question} | {answer}"
)
"""The user turn that the released aligner-7b-v1.0 model was trained on."""

EMPATHY_INSTRUCTION: str = (
    "Edit the following Question-Answer pair to make it more empathic and helpful: {inputline}"
)
"""The empathy aligner's user turn; ``{inputline}`` is ``question | answer`` (the ``empathy-json``
dataset and the ``empathy`` template fill it so)."""
