import streamlit as st

from pages import _cached, _charts, _dataset, _route, _state, _working
from vislab.views import architecture
from vislab.models import freezing, heads, stages
from vislab.figures import charts as plots

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
PRESET_CHOICE = "preset_choice"
PRESET_THAW = "preset_thaw"
PRESET_BN = "preset_bn"
HEAD_CHOICE = "head_choice"
TRAIN_STAGE_PREFIX = "train_"  # + stage name + plan version: a stage's trainable toggle
BN_STAGE_PREFIX = "bn_"  # + stage name + plan version: a stage's BatchNorm mode
MODULES_PREFIX = "modules_"  # + plan version: the single-module overrides
DIAGRAM = "diagram"

_dataset.open_page()
ss = st.session_state
st.title("Freeze & BatchNorm")
st.markdown(
    "A **frozen** stage keeps its pretrained weights (no gradients). BatchNorm has two more things that can "
    "change: its affine weights (γ, β) and its **running statistics**, which move on every training batch "
    "even when the weights are frozen — unless the layer is in `eval` or `frozen` mode."
)

c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
# the preset boxes show what the lab applied, and keep a person's unapplied choice until it changes elsewhere
if ss[_state.STRATEGY] in freezing.STRATEGIES:  # "custom" (edited by hand) is no preset: the box keeps its pick
    _state.follow(PRESET_CHOICE, ss[_state.STRATEGY])
_state.follow(PRESET_THAW, min(max(int(ss[_state.THAW_LAST]), 1), 50))
_state.follow(PRESET_BN, ss[_state.BN])
_state.follow(HEAD_CHOICE, ss[_state.HEAD])
strategy = c1.selectbox("Strategy preset", freezing.STRATEGIES, key=_state.kept(PRESET_CHOICE),
                        help="head: only the new head · partial: head + last N stages · surgical: head + only "
                             "the N-th stage from the head · full: everything · "
                             "two-phase: head, then everything at a smaller LR · scratch: random init, everything")
thaw = c2.number_input("Last N stages", 1, 50, key=_state.kept(PRESET_THAW),
                       help="partial: the last N stages train · surgical: only the N-th stage from the head trains")
bn = c3.selectbox("BN of thawed stages", freezing.BN_MODES, key=_state.kept(PRESET_BN))
kinds = list(heads.HEAD_KINDS)
head_kind = c4.radio("Head", kinds, key=_state.kept(HEAD_CHOICE),
                     help="mlp: BatchNorm1d, Linear, ReLU, BatchNorm1d, Dropout, Linear · attention: one "
                          "self-attention block over the last feature map's cells, read by a class token "
                          "(see the Attention page)")
refusal = (heads.attention_head_refusal(_working.working()[0])
           if head_kind == "attention" and ss[_state.HEAD] != "attention" else None)
if refusal:
    st.error(refusal)
elif head_kind != ss[_state.HEAD]:
    previous = ss[_state.HEAD]
    _working.set_model(ss[_state.MODEL], head_kind)
    try:
        _working.working()
    except heads.AttentionHeadError as exc:  # e.g. a forward torch.fx cannot trace
        st.error(str(exc))
        _working.set_model(ss[_state.MODEL], previous)
    _state.followed(HEAD_CHOICE, ss[_state.HEAD])
if st.button("Apply preset", type="primary"):
    _working.apply_preset(strategy, int(thaw), bn)
    for key, value in ((PRESET_CHOICE, ss[_state.STRATEGY]), (PRESET_THAW, ss[_state.THAW_LAST]),
                       (PRESET_BN, ss[_state.BN])):
        _state.followed(key, value)  # applied from these boxes: they keep what they show
    ss[_state.PLAN_VERSION] = ss.get(_state.PLAN_VERSION, 0) + 1

model, info = _working.working()
plan: freezing.FreezePlan = ss[_state.PLAN]
if not info.pretrained and ss[_state.STRATEGY] != "scratch":
    st.warning(f"`{info.name}` has random weights here: freezing random layers teaches nothing. "
               "Pick a model with real weights or the `scratch` strategy.")
version = ss.get(_state.PLAN_VERSION, 0)

summary = st.container()  # filled at the end, once every toggle below has been read
st.subheader("Stages")
rows = architecture.stage_rows(model, _cached.shapes_for(model, info))
new_trainable, new_bn = dict(plan.trainable), dict(plan.bn)
per_row = 3  # at 1280 px three cards a row hold a stage's name and its three BatchNorm buttons on one line each
for start in range(0, len(rows), per_row):
    cols = st.columns(per_row)
    for col, r in zip(cols, rows[start:start + per_row]):
        with col.container(border=True):
            name = r["stage"]
            label = "new head" if name == stages.HEAD else name
            new_trainable[name] = st.toggle(f"**{label}**", plan.trainable[name], key=f"{TRAIN_STAGE_PREFIX}{name}_{version}",
                                            help="on: thawed (trains) · off: frozen")
            shape = r["output"].replace(" ", "\u00a0")  # "32 x 112 x 112" never broken across lines
            st.caption(f"{r['params']:,}\u00a0params · out\u00a0{shape}")
            if r["bn_layers"]:
                mode = st.segmented_control(f"BatchNorm ({r['bn_layers']})", freezing.BN_MODES,
                                            default=plan.bn[name], key=f"{BN_STAGE_PREFIX}{name}_{version}")
                new_bn[name] = mode or plan.bn[name]
if new_trainable != plan.trainable or new_bn != plan.bn:
    plan = freezing.FreezePlan(new_trainable, new_bn, dict(plan.modules))
    ss[_state.PLAN] = plan
    if ss[_state.STRATEGY] != "two-phase":
        ss[_state.STRATEGY] = "custom"
    freezing.apply(model, plan)

with st.expander("Single modules (override a stage's choice for one module)"):
    mods = architecture.module_rows(model, _cached.shapes_for(model, info), depth=None)
    mod_table = [{"module": m["module"], "type": m["type"], "stage": m["stage"], "params": m["params"],
                  "train": m["state"] != "frozen"} for m in mods]
    mod_edit = st.data_editor(mod_table, key=f"{MODULES_PREFIX}{version}", hide_index=True, width="stretch",
                              disabled=["module", "type", "stage", "params"], height=300)
    overrides = dict(plan.modules)
    for before, after in zip(mod_table, mod_edit):
        if before["train"] != after["train"]:
            overrides[after["module"]] = bool(after["train"])
    if overrides != plan.modules:
        plan.modules = overrides
        ss[_state.STRATEGY] = "custom"
        freezing.apply(model, plan)
        st.rerun()
    if plan.modules and st.button("Clear module overrides"):
        plan.modules = {}
        freezing.apply(model, plan)
        ss[_state.PLAN_VERSION] = version + 1
        st.rerun()

rep = freezing.report(model)
rows = architecture.stage_rows(model, _cached.shapes_for(model, info))  # again: states may have changed
with summary:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Trainable parameters", f"{rep.trainable_params:,}")
    m2.metric("Frozen parameters", f"{rep.frozen_params:,}")
    m3.metric("Trainable share", f"{rep.trainable_params / max(rep.total, 1):.1%}")
    m4.metric("BN layers updating stats", len(rep.moving_bn_buffers))
    _charts.chart(plots.stage_diagram(rows, f"{info.name}: strategy {ss[_state.STRATEGY]}"), key=DIAGRAM)
    if ss[_state.STRATEGY] == "two-phase":
        st.info("Two-phase: training first runs the new head alone, then this plan at a smaller learning rate.")

st.subheader("When training starts")
st.markdown(f"- The optimizer updates **{len(rep.trainable_tensors)} tensors** "
            f"({rep.trainable_params:,} numbers); everything else stays bit-identical.\n"
            f"- **{len(rep.moving_bn_buffers)} BatchNorm layers** update their running mean/var on every batch"
            + (" — including some in frozen stages (the classic trap)." if any(
                plots.stage_state(r) == "frozen" and "train" in r["bn_modes"] for r in rows) else ".")
            + (f"\n- **{len(rep.stilled)} dropout / stochastic-depth layers** in frozen stages stay off: a "
               "frozen stage is a fixed feature extractor." if rep.stilled else ""))
with st.expander("Exactly which tensors and buffers"):
    st.markdown("**Trained parameters**")
    st.code("\n".join(rep.trainable_tensors) or "(none)", language=None)
    st.markdown("**Moving BatchNorm buffers**")
    st.code("\n".join(rep.moving_bn_buffers) or "(none)", language=None)
    if rep.stilled:
        st.markdown("**Dropout / stochastic depth switched off (frozen stages)**")
        st.code("\n".join(rep.stilled), language=None)
