"""A Falcon app, mounted at /falcon by .crossbar/config.json.

Falcon has no reverse routing; its way to a URL of the app is ``req.prefix``
(scheme, host and SCRIPT_NAME) or ``req.root_path`` (SCRIPT_NAME alone).
"""
import falcon


class Hello:
    def on_get(self, req, resp, name):
        resp.media = {
            "framework": "falcon",
            "greeting": "%s, %s!" % (req.get_param("greeting", default="Hello"), name),
            "path": req.path,
            "url": req.prefix + "/hello/world",
            "path_url": req.root_path + "/hello/world",
        }


app = falcon.App()
app.add_route("/hello/{name}", Hello())
