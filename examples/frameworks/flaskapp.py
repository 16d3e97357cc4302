"""A Flask app, mounted at /flask by .crossbar/config.json; it takes a file upload too."""
import hashlib

from flask import Flask, request, url_for

app = Flask(__name__)


@app.route("/hello/<name>")
def hello(name):
    return {
        "framework": "flask",
        "greeting": "%s, %s!" % (request.args.get("greeting", "Hello"), name),
        "path": request.path,
        "url": url_for("hello", name="world", _external=True),    # SCRIPT_NAME included
        "path_url": url_for("hello", name="world"),
    }


@app.route("/upload", methods=["POST"])
def upload():
    """A multipart upload (field "file"): answers the file's name, size and SHA-256."""
    uploaded = request.files["file"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: uploaded.stream.read(64 * 1024), b""):
        digest.update(chunk)
        size += len(chunk)
    return {"name": uploaded.filename, "size": size, "sha256": digest.hexdigest()}
