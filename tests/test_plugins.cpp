// Plugin loading errors are clear and name the file; good plugins load once and build objects.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "plugin_host/registry.h"
#include "mhd/solver.h"

namespace {

std::string load_error(const std::string& path, std::optional<mhd::PluginKind> kind = std::nullopt) {
  try {
    if (kind) mhd::PluginRegistry::global().load_file(path, *kind);
    else mhd::PluginRegistry::global().load_file(path);
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

TEST(PluginErrors, MissingFileIsNamed) {
  const auto msg = load_error("/nonexistent/libmhd_nothing.so");
  EXPECT_TRUE(contains(msg, "/nonexistent/libmhd_nothing.so: plugin file not found")) << msg;
}

TEST(PluginErrors, WrongAbiNamesBothVersions) {
  const auto msg = load_error(MHD_TEST_WRONG_ABI);
  EXPECT_TRUE(contains(msg, "plugin ABI version " + std::to_string(mhd::kPluginAbiVersion + 41) +
                                " does not match the host's " + std::to_string(mhd::kPluginAbiVersion)))
      << msg;
  EXPECT_TRUE(contains(msg, "wrong_abi")) << "names the file: " << msg;
}

TEST(PluginErrors, WrongKindIsRefused) {
  const auto msg = load_error(MHD_PLUGIN_ANDERSON, mhd::PluginKind::Memory);
  EXPECT_TRUE(contains(msg, "is a solver plugin, expected a memory plugin")) << msg;
}

TEST(PluginErrors, LibraryWithoutEntryIsNotAPlugin) {
  const auto msg = load_error(MHD_FRAMEWORK_LIB);
  EXPECT_TRUE(contains(msg, "not an mhd plugin (no mhd_plugin_entry symbol")) << msg;
}

TEST(PluginErrors, FileThatIsNoLibrary) {
  const auto path = std::filesystem::temp_directory_path() / "libmhd_garbage.so";
  std::ofstream(path) << "not an ELF file";
  const auto msg = load_error(path.string());
  EXPECT_TRUE(contains(msg, "cannot load plugin")) << msg;
}

TEST(PluginErrors, FactoryExceptionComesBackWithThePluginName) {
  auto& registry = mhd::PluginRegistry::global();
  const auto& plugin = registry.load_file(MHD_TEST_THROWING, mhd::PluginKind::Memory);
  try {
    registry.make<mhd::Memory>("throwing_memory", mhd::Params::defaults(plugin.manifest->params), mhd::ModelDims{8, 16});
    FAIL() << "factory must throw";
  } catch (const mhd::Error& e) {
    EXPECT_TRUE(contains(e.what(), "memory plugin 'throwing_memory' failed to build: cannot allocate 4 slots")) << e.what();
  }
}

TEST(PluginErrors, BadParameterValueIsDescribed) {
  auto& registry = mhd::PluginRegistry::global();
  const auto& plugin = registry.load_file(MHD_TEST_THROWING, mhd::PluginKind::Memory);
  const auto* spec = mhd::find_param(plugin.manifest->params, "size");
  ASSERT_NE(spec, nullptr);
  EXPECT_EQ(mhd::check_param_value(*spec, mhd::ParamValue{std::int64_t{9}}).value_or(""), "must be in [1, 8], got 9");
  EXPECT_EQ(mhd::check_param_value(*spec, mhd::ParamValue{std::string("big")}).value_or(""), "expected integer, got \"big\"");
  EXPECT_FALSE(mhd::check_param_value(*spec, mhd::ParamValue{std::int64_t{8}}).has_value());
}

TEST(PluginErrors, UnknownPluginSuggestsAName) {
  auto& registry = mhd::PluginRegistry::global();
  registry.load_file(MHD_PLUGIN_ANDERSON);
  try {
    registry.require(mhd::PluginKind::Solver, "andersen");
    FAIL();
  } catch (const mhd::Error& e) {
    EXPECT_TRUE(contains(e.what(), "unknown solver plugin 'andersen'; did you mean 'anderson'?")) << e.what();
  }
}

TEST(PluginLoading, SameFileLoadsOnceAndBuildsObjects) {
  auto& registry = mhd::PluginRegistry::global();
  const auto& first = registry.load_file(MHD_PLUGIN_HOPFIELD);
  const auto& second = registry.load_file(MHD_PLUGIN_HOPFIELD);
  EXPECT_EQ(&first, &second);
  EXPECT_EQ(first.manifest->kind, mhd::PluginKind::Memory);
  auto memory = registry.make<mhd::Memory>("hopfield", mhd::Params::defaults(first.manifest->params), mhd::ModelDims{16, 32});
  ASSERT_TRUE(memory);
  EXPECT_GT(memory->size(), 0);
}

TEST(PluginLoading, ScanningADirectoryRecordsFailuresInsteadOfDying) {
  auto& registry = mhd::PluginRegistry::global();
  const auto dir = std::filesystem::path(MHD_TEST_WRONG_ABI).parent_path();
  const auto before = registry.failures().size();
  registry.scan_directory(dir.string());
  ASSERT_GT(registry.failures().size(), before);
  bool wrong_abi_listed = false;
  for (const auto& f : registry.failures()) wrong_abi_listed |= contains(f.reason, "ABI version");
  EXPECT_TRUE(wrong_abi_listed);
}

}  // namespace
