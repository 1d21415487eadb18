"""Share a swapped smp model: the swap as data, the model card, smp's Hub layout, ``lit-ppool export``.

The modules import downward only: :mod:`.swaps` (what was swapped: record it, rebuild it, the
format version and errors) <- :mod:`.card` (the model card) <- :mod:`.hub` (``save_pretrained``,
``from_pretrained``) <- :mod:`.export` (``lit-ppool export``, imported on its own: it needs jsonargparse).
"""

from lit_ppool.sharing.card import model_card
from lit_ppool.sharing.hub import from_pretrained, save_pretrained
from lit_ppool.sharing.swaps import NotASavedModelError, SavedModelError, build_layer, layer_record

__all__ = ["NotASavedModelError", "SavedModelError", "build_layer", "from_pretrained", "layer_record", "model_card", "save_pretrained"]
