"""The review page: built from an output folder only, and driven in a real browser."""

import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import kilomatch
from kilomatch.cli import main
from kilomatch.export import save_npz
from kilomatch.review import build_report
from kilomatch.review.clusters import doubtful_cuts, doubtful_groups, summarize_clusters
from kilomatch.review.links import Links
from kilomatch.simulate import simulate_to_folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A small finished run (3 sessions) with its review page."""
    base = tmp_path_factory.mktemp("review")
    simulate_to_folder(base / "data", n_sessions=3, n_neurons=20, probe="NP1", seed=5)
    # as an importer leaves it: the sorter's own id of every unit
    session = np.load(base / "data" / "session_index.npy")
    (base / "data" / "units_source.csv").write_text(
        "unit,session,session_path,original_unit_id\n" + "".join(
            f"{k},{s},day{s},{1000 + k}\n" for k, s in enumerate(session)))
    out = base / "out"
    kilomatch.run({"path_to_data": str(base / "data"), "output_folder": str(out), "n_jobs": 1,
                   "motionEstimation": {"n_bootstrap": 20}})
    kilomatch.report(out)
    return out


def _page_data(page: Path) -> dict:
    text = page.read_text()
    found = re.search(r'<script type="application/json" id="kilomatch-data">(.*?)</script>',
                      text, re.S)
    return json.loads(found.group(1))


def test_page_lists_every_cluster_with_its_figure_beside_it(run_folder):
    page = run_folder / "report" / "index.html"
    data = _page_data(page)
    idx = np.load(run_folder / "IdxCluster.npy").ravel()
    assert [c["id"] for c in data["clusters"]] == sorted(set(idx[idx > 0].tolist()))
    for c in data["clusters"]:
        assert sorted(u[0] for u in c["units"]) == np.flatnonzero(idx == c["id"]).tolist()
        assert (run_folder / "report" / "img" / f"cluster_{c['id']}.png").stat().st_size > 0
    # no server, no CDN: nothing is fetched from elsewhere
    assert not re.search(r"(src|href)=\"(https?:)?//", page.read_text())
    assert data["link"]["label"] == "weighted similarity"
    # the run's own figures are copied beside the page
    assert any(f["src"] == "img/run_UnitDepth.png" for f in data["figures"])


def test_run_writes_one_row_per_tracked_neuron_with_the_sorter_ids(run_folder):
    idx = np.load(run_folder / "IdxCluster.npy").ravel()
    session = np.load(run_folder / "Output.npz")["SessionIndex"]
    with open(run_folder / "tracked_neurons.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["cluster"]) for r in rows] == sorted(set(idx[idx > 0].tolist()))
    for r in rows:
        for s in (1, 2, 3):
            unit = r[f"session_{s}"]
            members = np.flatnonzero((idx == int(r["cluster"])) & (session == s)).tolist()
            assert ([int(unit)] if unit else []) == members
            assert r[f"session_{s}_sorter_id"] == (str(1000 + int(unit)) if unit else "")


def _report_with_probability(run_folder, out, probability):
    """The report of a copy of the run whose CandidatePairs.npz holds ``probability`` (P,)."""
    shutil.copytree(run_folder, out, ignore=shutil.ignore_patterns("report"))
    with np.load(out / "CandidatePairs.npz") as z:
        pairs = dict(z)
    pairs["probability"] = probability(len(pairs["pairs"]))
    save_npz(out / "CandidatePairs.npz", pairs)
    return _page_data(build_report(out, figures=False))


def test_report_reads_the_match_probability_when_the_run_has_it(run_folder, tmp_path):
    data = _report_with_probability(run_folder, tmp_path / "out",
                                    lambda n: np.linspace(0, 1, n))
    assert data["link"]["kind"] == "probability"
    assert data["link"]["threshold"] == 0.5
    weakest = [c["weakest"] for c in data["clusters"] if c["weakest"] is not None]
    assert weakest and all(0 <= w <= 1 for w in weakest)


def test_report_shows_the_similarity_when_the_probability_could_not_be_fitted(run_folder,
                                                                               tmp_path):
    # a run too small to fit the probability stores NaN for every pair
    data = _report_with_probability(run_folder, tmp_path / "out",
                                    lambda n: np.full(n, np.nan, np.float32))
    assert data["link"]["kind"] == "similarity"


def test_report_flags_the_clusters_of_units_named_duplicates(run_folder, tmp_path):
    """units.csv's duplicate_of (kilomatch.duplicate_units) reaches the page as a flag; a run
    written before the column existed gets no flag and no error."""
    out = tmp_path / "out"
    shutil.copytree(run_folder, out, ignore=shutil.ignore_patterns("report"))
    with open(out / "units.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tracked = [r for r in rows if int(r["cluster"]) > 0]
    other = next(r for r in rows if r["session"] == tracked[0]["session"]
                 and r["unit"] != tracked[0]["unit"])
    tracked[0]["duplicate_of"] = other["unit"]

    def write(rows, columns):
        with open(out / "units.csv", "w", newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    write(rows, list(rows[0]))
    flagged = [c["id"] for c in _page_data(build_report(out, figures=False))["clusters"]
               if "duplicate" in c["flags"]]
    assert flagged == [int(tracked[0]["cluster"])]
    write(rows, [c for c in rows[0] if c != "duplicate_of"])
    data = _page_data(build_report(out, figures=False))
    assert not any("duplicate" in c["flags"] for c in data["clusters"])
    # a cell that is not a unit index is one message naming the file, row and column
    tracked[0]["duplicate_of"] = "twin"
    write(rows, list(rows[0]))
    with pytest.raises(kilomatch.KilomatchError, match=r"units.csv, row \d+: duplicate_of is "
                       r"'twin', not a unit index"):
        build_report(out, figures=False)
    # and so is a firing rate that is not a number
    tracked[0]["duplicate_of"] = ""
    tracked[0]["firing_rate_hz"] = "fast"
    write(rows, list(rows[0]))
    with pytest.raises(kilomatch.KilomatchError, match=r"units.csv, row \d+: firing_rate_hz "
                       r"is 'fast', not a number"):
        build_report(out, figures=False)


def test_report_of_a_folder_without_a_run_is_one_error_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no finished kilomatch run" in capsys.readouterr().err


def test_cluster_summary_flags_gaps_jumps_weak_links_and_finds_the_competitor():
    #             unit: 0  1  2  3  4  5  6
    idx = np.array([1, 1, 1, 2, 2, -1, 3])
    session = np.array([1, 2, 4, 1, 2, 3, 3])
    positions = np.array([[0, 100], [0, 101], [0, 102], [0, 300], [20, 300], [0, 150],
                          [0, 900]], float)
    pairs = np.array([[0, 1], [1, 2], [0, 2], [3, 4], [1, 5], [2, 3]])
    value = np.array([2.0, 1.9, 1.05, 2.2, 1.5, 0.4])
    links = Links(pairs, value, np.full(len(pairs), 1.0), "similarity", "s", "t")
    rows = summarize_clusters(idx, session, positions, np.full(7, 50.0), links, 7.0)
    one, two, three = rows
    assert one["flags"] == ["gap", "near"] and one["weakest"] == 1.05
    assert one["competitor"] == {"unit": 5, "value": 1.5, "cluster": None}
    assert two["flags"] == ["jump"] and two["jump"] == 20.0
    assert two["competitor"] == {"unit": 2, "value": 0.4, "cluster": 1}
    assert three["weakest"] is None and three["competitor"] is None and three["flags"] == []
    # unit 6 holds unit 5's spikes again, its session's (units.csv duplicate_of): its
    # cluster is flagged
    duplicate_of = np.array([-1, -1, -1, -1, -1, -1, 5])
    rows = summarize_clusters(idx, session, positions, np.full(7, 50.0), links, 7.0,
                              duplicate_of)
    assert [r["flags"] for r in rows] == [["gap", "near"], ["jump"], ["duplicate"]]


def test_the_curations_cuts_that_the_probability_doubts_are_flagged():
    """Pairs the curation took apart, by the sides they join now: clusters 1 and 2 at mean
    probability 0.6 (more likely one neuron: both flagged "cut", each naming the other),
    cluster 3 and unmatched unit 6 at 0.8 (cluster 3 flagged, naming the unit), clusters 1
    and 3 at 0.2 (not flagged); a same-session conflict at 0.99 and a pair now in one
    cluster again are left out."""
    from kilomatch.curation import REASONS
    #             unit: 0  1  2  3  4  5  6
    idx = np.array([1, 1, 2, 2, 3, 3, -1])
    session = np.array([1, 2, 3, 4, 1, 2, 3])
    positions = np.zeros((7, 2))
    names = np.array(REASONS)
    at = {name: k for k, name in enumerate(REASONS)}
    removed = np.array([[0, 2], [1, 3], [4, 6], [5, 6], [0, 4], [1, 4], [2, 5], [0, 1]])
    probability = np.array([0.7, 0.5, 0.9, 0.7, 0.2, 0.99, 0.2, 0.1])
    reason = np.array([at["split_at_distance"], at["split_at_distance"],
                       at["split_below_threshold"], at["split_below_threshold"],
                       at["split_below_threshold"], at["same_session_conflict"],
                       at["split_below_threshold"], at["split_below_threshold"]])
    cuts = doubtful_cuts(idx, removed, probability, reason, names)
    assert cuts == {
        1: [{"cluster": 2, "unit": 2, "probability": 0.6, "pairs": 2,
             "reason": "split_at_distance"}],
        2: [{"cluster": 1, "unit": 0, "probability": 0.6, "pairs": 2,
             "reason": "split_at_distance"}],
        3: [{"cluster": None, "unit": 6, "probability": 0.8, "pairs": 2,
             "reason": "split_below_threshold"}]}
    links = Links(np.empty((0, 2), np.int64), np.empty(0), np.empty(0), "similarity", "s", "t")
    rows = summarize_clusters(idx, session, positions, np.full(7, 50.0), links, 7.0,
                              cuts=cuts)
    assert [r["flags"] for r in rows] == [["cut"], ["cut"], ["cut"]]
    assert rows[2]["cut"] == cuts[3]
    # below the level no cut is doubtful
    assert doubtful_cuts(idx, removed, probability / 2, reason, names) == {}


# ------------------------------------------------------------------------------ browser

def _browser(download_dir: Path):
    # CI sets KILOMATCH_REQUIRE_BROWSER: there a missing browser fails instead of skipping
    missing = pytest.fail if os.environ.get("KILOMATCH_REQUIRE_BROWSER") else pytest.skip
    try:
        from selenium import webdriver
    except ImportError:
        missing("selenium is not installed (pip install '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        missing("Chromium and chromedriver are not installed "
                "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir), "download.prompt_for_download": False})
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def _wait(condition, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_clusters_the_probability_sees_as_two_groups_are_flagged_with_the_smaller_one():
    """Cluster 1: two sure pairs, 0.1-0.3 across (and one pair across never compared): two
    groups, the one without its first unit named. Cluster 2: one pair of 0.4, but its third
    unit is 0.6 from the other two on average: one group. Cluster 3: halves never compared but
    through pairs of 0.9 and 0.45: uncompared pairs alone flag nothing. Cluster 4: two units
    at 0.3. Runs without a probability flag none."""
    #             unit: 0  1  2  3  4  5  6  7  8  9 10 11 12
    idx = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4])
    session = np.array([1, 2, 3, 4, 1, 2, 3, 1, 2, 3, 4, 1, 2])
    pairs = np.array([[0, 1], [2, 3], [0, 2], [0, 3], [1, 2],
                      [4, 5], [4, 6], [5, 6],
                      [7, 8], [9, 10], [8, 9], [7, 9],
                      [11, 12]])
    value = np.array([0.95, 0.95, 0.1, 0.2, 0.3, 0.9, 0.4, 0.8, 0.9, 0.9, 0.9, 0.45, 0.3])
    links = Links(pairs, value, np.full(len(pairs), 0.5), "probability", "p", "t")
    groups = doubtful_groups(idx, links)
    assert groups == {
        1: {"units": [2, 3], "probability": 0.2, "pairs": 3, "uncompared": 1},
        4: {"units": [12], "probability": 0.3, "pairs": 1, "uncompared": 0}}
    rows = summarize_clusters(idx, session, np.zeros((13, 2)), np.full(13, 50.0), links, 7.0,
                              groups=groups)
    assert ["groups" in r["flags"] for r in rows] == [True, False, False, True]
    assert rows[0]["groups"] == groups[1] and rows[1]["groups"] is None
    # at 0.25 only cluster 1 (mean 0.2) is below the level; cluster 4 (0.3) is not
    assert doubtful_groups(idx, links, level=0.25) == {1: groups[1]}
    similarity = Links(pairs, value, np.full(len(pairs), 0.5), "similarity", "s", "t")
    assert doubtful_groups(idx, similarity) == {}


def test_review_in_a_browser_sort_view_decide_download_apply(run_folder, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = _browser(downloads)
    try:
        from selenium.webdriver.common.by import By
        data = _page_data(run_folder / "report" / "index.html")
        driver.get((run_folder / "report" / "index.html").as_uri())

        def shown_ids():
            return [int(r.get_attribute("data-id"))
                    for r in driver.find_elements(By.CSS_SELECTOR, "#clusters tbody tr")]

        # every cluster, weakest link first
        weakest = {c["id"]: c["weakest"] for c in data["clusters"]}
        ids = shown_ids()
        assert sorted(ids) == sorted(weakest)
        values = [weakest[i] for i in ids if weakest[i] is not None]
        assert values == sorted(values)
        # sorting by a column reorders the table
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').click()
        assert shown_ids() == sorted(weakest)
        driver.find_element(By.CSS_SELECTOR, 'th[data-key="id"]').click()
        assert shown_ids() == sorted(weakest, reverse=True)

        # the cluster view shows its figure
        largest = max(data["clusters"], key=lambda c: (len(c["units"]), -c["id"]))
        others = [c["id"] for c in data["clusters"] if c["id"] != largest["id"]]
        rejected = others[0]
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{largest["id"]}"]').click()
        img = driver.find_element(By.ID, "cluster-img")
        _wait(lambda: driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", img))
        # split: the first unit leaves
        leaving = largest["units"][0][0]
        driver.find_element(By.CSS_SELECTOR, f'.split-unit[value="{leaving}"]').click()
        driver.find_element(By.ID, "btn-split").click()
        # reject another cluster
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{rejected}"]').click()
        driver.find_element(By.ID, "btn-reject").click()
        assert "2 decisions" in driver.find_element(By.ID, "decision-count").text
        driver.find_element(By.ID, "download").click()
        saved = downloads / "curation.json"
        _wait(lambda: saved.is_file() and saved.stat().st_size > 0)
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()

    decisions = json.loads(saved.read_text())["decisions"]
    assert sorted((d["cluster"], d["action"]) for d in decisions) == sorted(
        [(largest["id"], "split"), (rejected, "reject")])
    curated = kilomatch.apply_curation(run_folder, saved)
    before = np.load(run_folder / "IdxCluster.npy").ravel()
    after = np.load(curated / "IdxCluster.npy").ravel()
    changed = np.flatnonzero(before != after)
    expected = {leaving} | set(np.flatnonzero(before == rejected).tolist())
    if len(largest["units"]) == 2:  # the unit left behind is alone: unmatched too
        expected |= {largest["units"][1][0]}
    assert set(changed.tolist()) == expected
    assert (after[sorted(expected)] == -1).all()


def test_in_a_browser_the_smaller_of_two_groups_is_ticked_for_a_split(run_folder, tmp_path):
    """The cluster view names the group the probability doubts, and "tick them" ticks exactly
    its units (the run's page, with a group given to its largest cluster); its unit table
    shows each unit's firing rate."""
    from kilomatch.review.page import page_html
    data = _page_data(run_folder / "report" / "index.html")
    largest = max(data["clusters"], key=lambda c: (len(c["units"]), -c["id"]))
    named = [largest["units"][-1][0]]
    largest["groups"] = {"units": named, "probability": 0.31, "pairs": 2, "uncompared": 1}
    largest["flags"] = largest["flags"] + ["groups"]
    page = run_folder / "report" / "groups.html"  # beside index.html: its images resolve
    page.write_text(page_html(data))
    driver = _browser(tmp_path)
    try:
        from selenium.webdriver.common.by import By
        driver.get(page.as_uri())
        driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{largest["id"]}"]').click()
        facts = driver.find_element(By.CSS_SELECTOR, "#view .facts").text
        assert f"two groups: units {named[0]} (session {largest['units'][-1][1]}) against " \
               "the rest: mean match probability 0.31 over 2 compared pairs, 1 never " \
               "compared" in facts
        driver.find_element(By.ID, "btn-tick").click()
        ticked = [int(b.get_attribute("value")) for b in
                  driver.find_elements(By.CSS_SELECTOR, "#view .split-unit") if b.is_selected()]
        assert ticked == named
        # the units' firing rates (units.csv firing_rate_hz), beside their amplitudes
        table = driver.find_element(By.CSS_SELECTOR, "#view table.units")
        assert "firing rate (Hz)" in table.find_element(By.TAG_NAME, "thead").text
        last_row = table.find_elements(By.CSS_SELECTOR, "tbody tr")[-1].text.split()
        assert last_row[-1] == f"{largest['units'][-1][4]:.1f}"
    finally:
        driver.quit()
        page.unlink()
