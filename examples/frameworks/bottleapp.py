"""A Bottle app, mounted at /bottle by .crossbar/config.json."""
import bottle

app = bottle.Bottle()


@app.route("/hello/<name>", name="hello")
def hello(name):
    return {    # Bottle answers a dict as JSON
        "framework": "bottle",
        "greeting": "%s, %s!" % (bottle.request.query.getunicode("greeting", default="Hello"),
                                 name),
        "path": bottle.request.path,
        "url": bottle.request.urlparts._replace(path=app.get_url("hello", name="world"),
                                                query="").geturl(),
        "path_url": app.get_url("hello", name="world"),     # SCRIPT_NAME included
    }
