"""The page of `cct serve` in a real headless Chromium: upload an image, read the prediction off the page."""

import threading

import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

import cct
from cct.serve import PredictionServer
from tests.helpers import write_image

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def test_upload_shows_top5_bars_and_the_heatmap(tmp_path, browser):
    torch.manual_seed(0)
    classifier = cct.Classifier(cct.create_model("cct_keras", class_names=tuple(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])))
    server = PredictionServer(("127.0.0.1", 0), classifier)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        image = write_image(tmp_path / "photo.png", (64, 48))
        expected = classifier.predict(image, top_k=5)
        browser.get(server.url + "/")
        WebDriverWait(browser, 20).until(lambda d: "cct_2_3x2_32_keras" in d.find_element(By.ID, "model").text)
        # before an upload the results stay hidden (a broken image and an empty caption showed)
        assert not browser.find_element(By.ID, "output").is_displayed()
        browser.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
        assert browser.find_element(By.ID, "output").is_displayed()
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results li .label")]
        shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results li .prob")]
        assert labels == expected.labels
        assert shown == [f"{100 * p:.1f}%" for p in expected.probabilities]
        widths = [e.value_of_css_property("width") for e in browser.find_elements(By.CSS_SELECTOR, ".bar")]
        assert float(widths[0].rstrip("px")) >= float(widths[-1].rstrip("px"))
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("data-drawn") == "1")
        # a small image was shown at its own size: a CIFAR image 32 px wide beside a 224 px heatmap
        preview, heatmap = browser.find_element(By.ID, "preview"), browser.find_element(By.ID, "heatmap")
        assert preview.size == heatmap.size == {"width": 224, "height": 224}
        browser.set_window_size(500, 900)  # a phone's width (headless Chromium's narrowest): the two stacked there
        WebDriverWait(browser, 10).until(lambda d: d.execute_script("return window.innerWidth") == 500)
        assert preview.size == heatmap.size and preview.location["y"] == heatmap.location["y"]

        first_upload = preview.get_attribute("src")
        (tmp_path / "notes.png").write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "notes.png"))
        WebDriverWait(browser, 20).until(lambda d: "not a readable image" in d.find_element(By.ID, "error").text)
        assert not browser.find_element(By.ID, "output").is_displayed()  # not the last image's results
        # the page let go of the first upload's bytes (each upload's were held until the page closed)
        fetched = browser.execute_async_script(
            "fetch(arguments[0]).then(() => arguments[1]('read'), () => arguments[1]('gone'))", first_upload)
        assert first_upload.startswith("blob:") and fetched == "gone"
    finally:
        server.shutdown()
        server.server_close()


def test_a_class_token_model_shows_no_heatmap_figure(tmp_path, browser):
    # its caption "sequence-pooling weights" showed beside no heatmap
    server = PredictionServer(("127.0.0.1", 0), cct.Classifier(cct.create_model("vit_lite_6_4_32")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 20).until(lambda d: "vit_lite_6_4_32" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "file").send_keys(str(write_image(tmp_path / "photo.png", (40, 40))))
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 5)
        assert browser.find_element(By.ID, "preview").is_displayed()
        assert not browser.find_element(By.ID, "pooling").is_displayed()
    finally:
        server.shutdown()
        server.server_close()
