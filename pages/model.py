import streamlit as st

from pages import _cached, _charts, _dataset, _route, _state, _working
from vislab.views import architecture
from vislab.models import catalog, weights
from vislab.figures import charts as plots

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
WEIGHTS_UPLOAD = "weights_upload"
DO_IMPORT = "do_import"
PARAMS_CHART = "params_chart"
MODEL_PICK = "model_pick"
MODEL_TYPED = "model_typed"

_dataset.open_page()
ss = st.session_state
st.title("Model")

names = catalog.names()
OTHER = "other timm / torchvision name…"
current = ss[_state.MODEL]
# the picker shows the model in use, and a person's pick stays picked (a keyed widget: one per page, whatever
# model is in use; it follows the model only when that changed elsewhere: Home, another tab, a reload)
def _follow(model: str, follow=_state.follow) -> None:
    follow(MODEL_PICK, model if model in names else OTHER)
    follow(MODEL_TYPED, model if model not in names else "")


_follow(current)
choice = st.selectbox("Pretrained model", names + [OTHER], key=_state.kept(MODEL_PICK),
                      format_func=lambda n: n if n == OTHER else
                      f"{n}  ·  {catalog.lookup(n).family} {catalog.lookup(n).year}")
name = choice
if choice == OTHER:
    name = st.text_input("Model name", key=_state.kept(MODEL_TYPED),
                         placeholder="e.g. resnet34, regnet_y_400mf, seresnext26d_32x4d, deit_tiny_patch16_224",
                         help="Any torchvision.models name (resnet34, regnet_y_400mf, …) or timm name "
                              "(seresnext26d_32x4d, deit_tiny_patch16_224, …)").strip()
    if not name:
        st.info(f"Type a model name; the lab keeps using `{current}` until then.")
        st.stop()
try:
    source = catalog.source_of(name)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
_working.set_model(name)
_follow(name, _state.followed)  # picked here: the next run keeps the picker as it is

entry = catalog.lookup(name)
status = weights.status(name, source)
if status.available:
    st.success(f"**Real weights available** — {_working.weights_badge(status)}  \n`{status.path}`")
else:
    st.warning(f"**No pretrained weights for `{name}` on this machine.** It starts from random init, so it "
               "has learned nothing yet: training only the head would be meaningless.  \n"
               + weights.missing_advice(name, source))
if entry:
    st.caption(f"{entry.family} ({entry.year}): {entry.idea}. Source: {entry.source}. "
               f"SE blocks: {'yes' if entry.has_se else 'no'}. Self-attention: {'yes' if entry.has_attention else 'no'}.")

with st.expander("Import a weights file (.pth, .pt, .bin, .safetensors)"):
    up = st.file_uploader("Weights file", type=["pth", "pt", "bin", "safetensors"], key=WEIGHTS_UPLOAD)
    if up is not None and st.button("Check and import", key=DO_IMPORT):
        target = _dataset.uploads_folder() / f"upload_{up.name}"
        target.write_bytes(up.getvalue())
        try:
            new = weights.import_file(target, name)
        except weights.WeightsError as exc:
            st.error(f"Not imported: {exc}")
        else:
            st.cache_data.clear()
            ss.pop(_state.WORKING, None)
            st.success(f"Imported: {_working.weights_badge(new)}")
        finally:
            target.unlink(missing_ok=True)

model, info = _working.working()
shapes = _cached.shapes_for(model, info)
c, h, w = info.data_config.input_size
st.markdown(f"Input **{h}×{w}**, mean {tuple(round(m, 3) for m in info.data_config.mean)}, std "
            f"{tuple(round(s, 3) for s in info.data_config.std)}, {info.data_config.interpolation} resize, "
            f"crop {info.data_config.crop_pct:.3f} — from the model's own data config. Head `{info.head}` sized "
            f"for {info.num_classes} classes.")

stage_rows = architecture.stage_rows(model, shapes)
_charts.chart(plots.params_by_stage(stage_rows), key=PARAMS_CHART)
st.subheader("Stages (the names freezing uses)")
st.dataframe(
    [{"stage": r["stage"], "modules": ", ".join(r["modules"]), "output": r["output"], "params": r["params"],
      "trainable": r["trainable"], "state": plots.stage_state(r), "BatchNorm": ", ".join(r["bn_modes"]) or "-"}
     for r in stage_rows],
    hide_index=True, width="stretch",
)
with st.expander("Every module with parameters"):
    st.dataframe(architecture.module_rows(model, shapes), hide_index=True, width="stretch")
