"""Open a review page in headless Chromium and time it: the full cluster table, a sort, 20
scroll steps, and how many images were fetched (they load only when a cluster is opened).

    python benchmarks/report_page.py /abs/path/OUTPUT/report/index.html [MIN_ROWS]

Needs selenium, chromium and chromedriver (the test extra and `apt-get install chromium
chromium-driver`)."""
import shutil, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

page = sys.argv[1]
min_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 1
options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
            "--window-size=1600,1000"):
    options.add_argument(arg)
d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
t0 = time.monotonic()
d.get("file://" + page)
while d.execute_script("return document.querySelectorAll('#clusters tbody tr').length") < min_rows:
    time.sleep(0.05)
t_load = time.monotonic() - t0
rows = d.execute_script("return document.querySelectorAll('#clusters tbody tr').length")
imgs_before = d.execute_script("return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
head = d.find_elements(By.CSS_SELECTOR, "#columns th")
t1 = time.monotonic(); head[0].click(); first = d.execute_script("return document.querySelector('#clusters tbody tr').innerText"); t_sort = time.monotonic() - t1
pane = "document.querySelector('#table-pane .scroll') || document.querySelector('#table-pane')"
t2 = time.monotonic()
for k in range(20):
    d.execute_script(f"var p = {pane}; p.scrollTop = p.scrollHeight * {k + 1} / 20; window.scrollTo(0, document.body.scrollHeight * {k + 1} / 20);")
t_scroll = time.monotonic() - t2
imgs_after = d.execute_script("return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
n_imgs = d.execute_script("return document.images.length")
print(f"rows {rows}; table complete after {t_load:.2f} s; sort by first column {t_sort:.2f} s; "
      f"20 scroll steps {t_scroll:.2f} s; images loaded at open {imgs_before} of {n_imgs}, after scrolling {imgs_after}")
d.quit()
