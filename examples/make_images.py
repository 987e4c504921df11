"""Draw the example images in ``examples/images`` (public domain: made here, from shapes).

Run ``python examples/make_images.py`` to recreate them.
"""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "images"


def snow_scene() -> Image.Image:
    """Skis on the left, a long snowboard and a short one to their right, a skier behind."""
    image = Image.new("RGB", (640, 480), (150, 200, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 260, 640, 480), fill=(245, 248, 252))
    draw.polygon([(0, 260), (160, 120), (330, 260)], fill=(120, 130, 150))
    draw.polygon([(250, 260), (450, 90), (640, 240), (640, 260)], fill=(100, 110, 135))
    for x in (70, 100):  # a pair of skis standing upright
        draw.rounded_rectangle((x, 250, x + 14, 440), radius=6, fill=(200, 30, 40))
    draw.rounded_rectangle((230, 215, 280, 440), radius=22, fill=(30, 60, 160))  # long snowboard
    draw.rounded_rectangle((360, 330, 405, 440), radius=20, fill=(20, 140, 70))  # short snowboard
    draw.ellipse((505, 170, 535, 200), fill=(230, 190, 160))  # skier: head, body, legs
    draw.rectangle((500, 200, 540, 270), fill=(240, 120, 20))
    draw.rectangle((503, 270, 517, 320), fill=(40, 40, 50))
    draw.rectangle((523, 270, 537, 320), fill=(40, 40, 50))
    return image


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    snow_scene().save(OUT / "snow.png", optimize=True)
    print(f"wrote {OUT / 'snow.png'}")
