import json, time
def test_probe_text(text_run):
    print(text_run.result.err[-2500:])
    print(json.dumps(json.loads((text_run.run_dir/"metrics.json").read_text()), indent=1))
    print((text_run.run_dir/"config.yaml").read_text())
def test_probe_image(image_run):
    print(image_run.result.err[-2500:])
    print(json.dumps(json.loads((image_run.run_dir/"metrics.json").read_text()), indent=1))
    print((image_run.run_dir/"config.yaml").read_text())
