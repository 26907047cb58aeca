"""The Train page's settings, drawn from TrainConfig's declarations: one widget per option, nothing hand-listed.

Labels, help, bounds and choices come from `tl_core.config`; so does every default. Options whose default
depends on the strategy (epochs) are reset when the strategy changes, so the widget never keeps a stale value.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from tl_core import plan
from tl_core.config import EPOCHS_BY_STRATEGY, Option, TrainConfig, options

KEY = "cfg_"
STRATEGY_LABELS = {"features": "Feature extraction (frozen backbone, fastest)", "finetune": "Fine-tune the last K stages",
                   "full": "Full fine-tune (backbone learns slowly, head fast)"}


def _strategy_changed() -> None:
    st.session_state[KEY + "epochs"] = EPOCHS_BY_STRATEGY[st.session_state[KEY + "strategy"]]


def _widget(name: str, kind: type, opt: Option, default: Any, container, strategy: str, disabled: bool = False,
            key: str | None = None) -> Any:
    key = key or KEY + name
    if name == "strategy":
        return container.radio(opt.label, opt.choices, format_func=STRATEGY_LABELS.get, key=key, help=opt.help,
                               on_change=_strategy_changed)
    if name == "epochs":
        default = EPOCHS_BY_STRATEGY[strategy]
    if kind is bool:
        return container.checkbox(opt.label, value=default, key=key, help=opt.help, disabled=disabled)
    if opt.choices:
        choices = ([None] if default is None else []) + list(opt.choices)
        return container.selectbox(opt.label, choices, index=choices.index(default), key=key, help=opt.help, disabled=disabled,
                                   format_func=lambda v: "automatic" if v is None else str(v))
    if kind is str:
        return container.text_input(opt.label, value=default or "", key=key, help=opt.help, disabled=disabled) or None
    if kind is int:
        return container.number_input(opt.label, int(opt.low), int(opt.high), default, step=1, key=key, help=opt.help, disabled=disabled,
                                      placeholder="automatic")
    return container.number_input(opt.label, float(opt.low), float(opt.high), default, key=key, help=opt.help, disabled=disabled,
                                  format="%g", placeholder="automatic", step=None)


def option_widget(name: str, key: str, container=st) -> Any:
    """One declared option drawn as the Train page draws it, for the sections that set only the few options that
    decide their embeddings (backbone comparison, data health)."""
    kind, opt, default = next((k, o, d) for n, k, o, d in options() if n == name)
    return _widget(name, kind, opt, default, container, TrainConfig.strategy, key=key)


def config_form(backbone: str) -> TrainConfig:
    """Render every option the page sets (main ones first, the rest under "More settings"); return the config."""
    strategy = st.session_state.get(KEY + "strategy", TrainConfig.strategy)
    values: dict[str, Any] = {"backbone": backbone}
    declared = [o for o in options() if o[2].page]
    main = [o for o in declared if not o[2].advanced]
    name, kind, opt, default = main[0]  # the strategy comes first: the rest depends on it
    strategy = values[name] = _widget(name, kind, opt, default, st, strategy)
    unused = plan.unused_options(TrainConfig(backbone=backbone, strategy=strategy,
                                             embedding_cache=st.session_state.get(KEY + "embedding_cache", True)))
    for (name, kind, opt, default), container in zip(main[1:], st.columns(len(main) - 1)):
        values[name] = _widget(name, kind, opt, default, container, strategy, disabled=name in unused)
    with st.expander("More settings"):
        columns = st.columns(3)
        for i, (name, kind, opt, default) in enumerate(o for o in declared if o[2].advanced):
            values[name] = _widget(name, kind, opt, default, columns[i % 3], strategy)
    if values["strategy"] != "finetune":
        values.pop("finetune_stages")  # shown for every strategy, used only by finetune
    return TrainConfig(**values)
