import hashlib

from django import forms
from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect, render


class HelloForm(forms.Form):
    name = forms.CharField(max_length=50)


class UploadForm(forms.Form):
    file = forms.FileField()


def home(request):
    """A plain view; it echoes the request's path and query."""
    return render(request, "home.html", {"q": request.GET.get("q", "")})


def hello(request):
    """A form POST protected by CSRF; then Post/Redirect/Get with a message."""
    if request.method == "POST":
        form = HelloForm(request.POST)
        if form.is_valid():
            messages.success(request, "Hello, %s!" % form.cleaned_data["name"])
            return redirect("hello")
    else:
        form = HelloForm()
    return render(request, "hello.html", {"form": form})


def upload(request):
    """A multipart file upload (CSRF-protected too): answers the file's name, size and SHA-256."""
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            uploaded = form.cleaned_data["file"]
            digest = hashlib.sha256()
            for chunk in uploaded.chunks():
                digest.update(chunk)
            return JsonResponse({"name": uploaded.name, "size": uploaded.size,
                                 "sha256": digest.hexdigest()})
    else:
        form = UploadForm()
    return render(request, "upload.html", {"form": form})
