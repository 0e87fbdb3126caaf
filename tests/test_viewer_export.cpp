// The PNGs `mhd-viewer --export` rendered from a real tiny study (tests/viewer/export_tiny.sh): each
// expected chart exists, is 1200x800, and is a drawn chart, not a blank image — several distinct
// colours (series, bands, legend) and dark text in the axis-label regions.
#include <gtest/gtest.h>

#include <cctype>
#include <string>

#include <QColor>
#include <QDir>
#include <QImage>
#include <QSet>

namespace {

const QString kDir = QStringLiteral(MHD_VIEWER_PNG_DIR);

QImage load(const QString& name) {
  QImage image(QDir(kDir).filePath(name));
  return image.convertToFormat(QImage::Format_RGB32);
}

int distinct_colors(const QImage& image) {
  QSet<QRgb> colors;
  for (int y = 0; y < image.height(); y += 2)
    for (int x = 0; x < image.width(); x += 2) colors.insert(image.pixel(x, y));
  return colors.size();
}

// Dark (text-like) pixels in a rectangle.
int dark_pixels(const QImage& image, const QRect& rect) {
  int n = 0;
  for (int y = rect.top(); y <= rect.bottom(); ++y)
    for (int x = rect.left(); x <= rect.right(); ++x)
      if (qGray(image.pixel(x, y)) < 150) ++n;
  return n;
}

// Pixels of a saturated colour (a series, a band, a bar) anywhere in the image.
int colored_pixels(const QImage& image) {
  int n = 0;
  for (int y = 0; y < image.height(); y += 2)
    for (int x = 0; x < image.width(); x += 2)
      if (QColor(image.pixel(x, y)).hsvSaturation() > 80) ++n;
  return n;
}

class Export : public ::testing::TestWithParam<const char*> {};

TEST_P(Export, ChartIsDrawnAtTheFixedSize) {
  const QString name = QString::fromUtf8(GetParam()) + QStringLiteral(".png");
  const QImage image = load(name);
  ASSERT_FALSE(image.isNull()) << "missing or unreadable: " << QDir(kDir).filePath(name).toStdString();
  EXPECT_EQ(image.width(), 1200);
  EXPECT_EQ(image.height(), 800);
  EXPECT_GT(distinct_colors(image), 20) << "looks blank";
  EXPECT_GT(colored_pixels(image), 500) << "no series drawn";
  // Axis labels: the y labels sit in the left strip, the x labels and title in the bottom band, the
  // chart title at the top.
  EXPECT_GT(dark_pixels(image, QRect(0, 60, 140, 640)), 80) << "no y-axis text";
  EXPECT_GT(dark_pixels(image, QRect(60, 640, 1100, 159)), 150) << "no x-axis text";
  EXPECT_GT(dark_pixels(image, QRect(100, 0, 1000, 50)), 100) << "no title";
}

INSTANTIATE_TEST_SUITE_P(Viewer, Export,
                         ::testing::Values("curves_loss", "curves_eval_accuracy", "ablation_loss",
                                           "ablation_grad_norm", "scaling_memory.size_loss",
                                           "scaling_memory.size_eval_accuracy", "traces_forward",
                                           "traces_backward"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(ExportWindow, TheWindowWithItsStudyTreeIsRendered) {
  const QImage image = load(QStringLiteral("window.png"));
  ASSERT_FALSE(image.isNull());
  EXPECT_EQ(image.size(), QSize(1500, 900));
  EXPECT_GT(distinct_colors(image), 20);
  // The tree on the left: text of the study, variants and trials; done trials in green.
  EXPECT_GT(dark_pixels(image, QRect(0, 0, 300, 400)), 200) << "no study tree text";
  int green = 0;
  for (int y = 0; y < 600; ++y)
    for (int x = 0; x < 320; ++x) {
      const QColor c(image.pixel(x, y));
      if (c.green() > 110 && c.red() < 80 && c.blue() < 80) ++green;
    }
  EXPECT_GT(green, 30) << "no done trial coloured green";
}

TEST(ExportBlank, AnEmptyImageFailsTheChecks) {
  QImage blank(1200, 800, QImage::Format_RGB32);
  blank.fill(Qt::white);
  EXPECT_LT(distinct_colors(blank), 20);
  EXPECT_EQ(colored_pixels(blank), 0);
  EXPECT_EQ(dark_pixels(blank, QRect(0, 60, 140, 640)), 0);
}

}  // namespace
