"""TL Studio's entry point, two things in one file so `streamlit run streamlit_app.py` is all a user types.

Run by Streamlit as the app script, it is the frame (as in Streamlit's own hello app): it declares the pages with
`st.navigation`, lets nobody past the sign-in form on an exposed server, draws the sidebar and the title, then runs
the chosen page, a flat script in `app_pages/`. Imported by `streamlit run` (which finds `app` below), it is the server:
Streamlit's own routes and websocket behind the sign-in gate of `tl_core/dashboard/gate.py`, open as before on
localhost. Logic lives in tl_core.
"""

import errno

import streamlit as st

PAGES = (("app_pages/0_Home.py", "Home", ":material/home:"), ("app_pages/1_Dataset.py", "Dataset", ":material/photo_library:"),
         ("app_pages/2_Backbones.py", "Backbones", ":material/speed:"), ("app_pages/3_Train.py", "Train", ":material/model_training:"),
         ("app_pages/4_Predict.py", "Predict", ":material/image_search:"))

UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.ENOTDIR}  # storage, not a bug


def frame() -> None:
    from app_pages.ui.auth import sign_in_page, signed_in
    from app_pages.ui.shared import plain, show_flash, sidebar
    from tl_core import paths

    st.set_page_config(page_title="TL Studio", page_icon=":material/model_training:", layout="wide")
    if not signed_in():  # an exposed server shows the sign-in form and nothing else: no navigation, no sidebar
        st.navigation([st.Page(sign_in_page, title="Sign in", icon=":material/lock:")], position="hidden").run()
        return
    page = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)])
    heading = page.title if page.url_path else "TL Studio"
    st.set_page_config(page_title=f"{page.title} · TL Studio")
    try:
        sidebar()
        st.title(heading)
        show_flash(heading)
        page.run()
    except OSError as e:
        if e.errno not in UNWRITABLE:
            raise
        st.error(f"TL Studio cannot write {plain(e.filename or paths.home())} ({e.strerror}). Set TL_STUDIO_HOME and "
                 "TL_STUDIO_RUNS to writable folders and restart.")


if __name__ == "__main__":
    frame()
else:
    from app_pages.ui.auth import server_settings
    from tl_core.dashboard import gate

    app = st.App(__file__, middleware=gate.middleware(server_settings))
