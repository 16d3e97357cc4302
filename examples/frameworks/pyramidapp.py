"""A Pyramid app, mounted at /pyramid by .crossbar/config.json."""
from pyramid.config import Configurator


def hello(request):
    return {
        "framework": "pyramid",
        "greeting": "%s, %s!" % (request.params.get("greeting", "Hello"),
                                 request.matchdict["name"]),
        "path": request.path,
        "url": request.route_url("hello", name="world"),     # SCRIPT_NAME included
        "path_url": request.route_path("hello", name="world"),
    }


def make_app():
    with Configurator() as config:
        config.add_route("hello", "/hello/{name}")
        config.add_view(hello, route_name="hello", renderer="json")
        return config.make_wsgi_app()


app = make_app()
