"""Names that pages/attention.py and pages/freeze.py still import from here, until they import them from
their own modules: session keys and the chart helper (`_state`), the session's dataset (`_dataset`), its
working model (`_working`), cached views (`_cached`), the look pages' models (`_runs`) and the image picker
(`_images`). Nothing else imports this module; it holds no code of its own.
"""

from pages._cached import cached_view, shapes_for  # noqa: F401
from pages._dataset import init_state  # noqa: F401
from pages._images import pick_images  # noqa: F401
from pages._runs import view_models  # noqa: F401
from pages._state import BN, HEAD, MODEL, PLAN, STRATEGY, THAW_LAST, chart  # noqa: F401
from pages._working import apply_preset, set_model, working  # noqa: F401
