// `mhd merge`: the shards of one study combined into a new results file (results.h).
#include "results/results.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "config/trial_config.h"
#include "mhd/error.h"
#include "results/store.h"
#include "study/study.h"

namespace mhd {

namespace {

struct MergeInput {
  std::string path;
  StudyRow study;
  std::vector<TrialRow> trials;
};

std::string trial_label(const TrialRow& t) {
  return t.variant + (t.sweep.empty() ? "" : " " + t.sweep) + " seed=" + std::to_string(t.seed);
}

// Inputs must be shards of one study: same name, same TOML, same expansion, no trial twice.
void check_merge_inputs(const std::vector<MergeInput>& inputs) {
  const MergeInput& first = inputs.front();
  std::map<std::int64_t, const MergeInput*> owner;  // trial index -> input holding it
  for (const auto& in : inputs) {
    if (in.study.name != first.study.name) {
      throw Error(in.path + ": study '" + in.study.name + "' is not study '" + first.study.name + "' of " +
                  first.path + "; refusing to merge different studies");
    }
    if (in.study.toml != first.study.toml) {
      throw Error(in.path + ": study '" + in.study.name + "' was run from another study file (TOML) than " +
                  first.path + "; refusing to merge");
    }
    if (!in.study.expansion_hash.empty() && !first.study.expansion_hash.empty() &&
        in.study.expansion_hash != first.study.expansion_hash) {
      throw Error(in.path + ": study '" + in.study.name + "' expands to other trials than in " + first.path +
                  " (plugins or defaults changed?); refusing to merge");
    }
    for (const auto& t : in.trials) {
      const auto [it, fresh] = owner.emplace(t.index, &in);
      if (!fresh) {
        throw Error(in.path + ": trial #" + std::to_string(t.index + 1) + " (" + trial_label(t) + ") is also in " +
                    it->second->path + "; each shard once");
      }
    }
  }
}

// Column names of `table` in schema `schema` ("main", "src").
std::vector<std::string> table_columns(sqlite3* db, const std::string& path, const std::string& schema,
                                       const std::string& table) {
  Statement s(db, path, "SELECT name FROM pragma_table_info(?, ?) ORDER BY cid");
  s.bind(1, table).bind(2, schema);
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  return out;
}

std::string quoted(const std::string& name) { return "\"" + name + "\""; }

}  // namespace

MergeSummary ResultsDb::merge(const std::string& output, const std::vector<std::string>& inputs) {
  if (inputs.empty()) throw Error("mhd merge: no input files given");
  std::vector<MergeInput> in;
  for (const auto& path : inputs) {
    if (std::filesystem::absolute(path) == std::filesystem::absolute(output))
      throw Error(path + ": is also the output; merge into a new file");
    auto db = open(path, /*read_only=*/true);
    auto study = db->latest_study();
    if (!study) throw Error(path + ": no study recorded; nothing to merge");
    in.push_back({path, *study, db->trials(study->id)});
  }
  check_merge_inputs(in);

  MergeSummary summary;
  summary.study = in.front().study.name;
  // Shards of an I/N split that are not among the inputs (reported, not refused: a partial merge
  // is useful while the last shards still run).
  if (const auto& shard = in.front().study.shard; !shard.empty()) {
    const std::int64_t n = std::stoll(shard.substr(shard.find('/') + 1));
    for (std::int64_t i = 1; i <= n; ++i) {
      const std::string name = std::to_string(i) + "/" + std::to_string(n);
      if (std::none_of(in.begin(), in.end(), [&](const MergeInput& m) { return m.study.shard == name; }))
        summary.missing_shards.push_back(name);
    }
  }

  auto out = open(output);
  if (out->latest_study()) throw Error(output + ": already holds a study; merge into a new file");
  sqlite3* db = out->impl_->db;
  const StudyRow& s0 = in.front().study;
  for (const auto& m : in) {
    {
      Statement attach(db, output, "ATTACH DATABASE ? AS src");
      attach.bind(1, m.path).run();
    }
    struct Detach {
      sqlite3* db;
      ~Detach() { sqlite3_exec(db, "DETACH DATABASE src", nullptr, nullptr, nullptr); }
    } detach{db};
    Transaction tx(db, output);
    std::int64_t study_id = 0;
    {
      Statement find(db, output, "SELECT id FROM studies ORDER BY id LIMIT 1");
      if (find.step()) study_id = find.integer(0);
    }
    if (study_id == 0) {
      // The merged study: the first shard's row, the whole study (no shard), started at the
      // earliest shard's start.
      std::string started = s0.started_at;
      for (const auto& other : in) started = std::min(started, other.study.started_at);
      Statement insert(db, output,
                       "INSERT INTO studies(name, description, toml, started_at, git_revision, torch_version, host, "
                       "device, threads, interop_threads, jobs, shard, expansion_hash, blas, cpu_features) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?)");
      insert.bind(1, s0.name).bind(2, s0.description).bind(3, s0.toml).bind(4, started).bind(5, s0.git_revision);
      insert.bind(6, s0.torch_version).bind(7, s0.host).bind(8, s0.device).bind(9, s0.threads);
      insert.bind(10, s0.interop_threads).bind(11, s0.jobs).bind(12, s0.expansion_hash);
      insert.bind(13, s0.blas).bind(14, s0.cpu_features).run();
      study_id = sqlite3_last_insert_rowid(db);
    }
    // Trials: every column both files have, the study id replaced; old -> new ids in a temp table.
    exec(db, output, "CREATE TEMP TABLE IF NOT EXISTS merge_ids(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)");
    exec(db, output, "DELETE FROM temp.merge_ids");
    std::string columns;
    const auto src_trial_columns = table_columns(db, output, "src", "trials");
    for (const auto& c : table_columns(db, output, "main", "trials")) {
      if (c == "id" || c == "study_id") continue;
      if (std::find(src_trial_columns.begin(), src_trial_columns.end(), c) != src_trial_columns.end())
        columns += ", " + quoted(c);
    }
    for (const auto& t : m.trials) {
      Statement copy(db, output,
                     ("INSERT INTO main.trials(study_id" + columns + ") SELECT ?" + columns +
                      " FROM src.trials WHERE id = ?")
                         .c_str());
      copy.bind(1, study_id).bind(2, t.id).run();
      Statement map(db, output, "INSERT INTO temp.merge_ids(old, new) VALUES (?, ?)");
      map.bind(1, t.id).bind(2, static_cast<std::int64_t>(sqlite3_last_insert_rowid(db))).run();
    }
    // Every table of the input that holds trial rows, created in the output when this build's
    // schema lacks it.
    std::vector<std::pair<std::string, std::string>> tables;  // name, CREATE statement
    {
      Statement list(db, output,
                     "SELECT m.name, m.sql FROM src.sqlite_master m, pragma_table_info(m.name, 'src') p "
                     "WHERE m.type = 'table' AND m.name != 'trials' AND p.name = 'trial_id' ORDER BY m.name");
      while (list.step()) tables.emplace_back(list.text(0), list.text(1));
    }
    for (const auto& [table, create] : tables) {
      if (table_columns(db, output, "main", table).empty()) exec(db, output, create.c_str());
      const auto src_columns = table_columns(db, output, "src", table);
      std::string names, values;
      for (const auto& c : table_columns(db, output, "main", table)) {
        if (std::find(src_columns.begin(), src_columns.end(), c) == src_columns.end()) continue;
        names += (names.empty() ? "" : ", ") + quoted(c);
        values += (values.empty() ? "" : ", ") + (c == "trial_id" ? std::string("ids.new") : "s." + quoted(c));
      }
      exec(db, output,
           ("INSERT INTO main." + quoted(table) + "(" + names + ") SELECT " + values + " FROM src." + quoted(table) +
            " s JOIN temp.merge_ids ids ON ids.old = s.trial_id ORDER BY s.rowid")
               .c_str());
    }
    tx.commit();
    summary.trials += static_cast<std::int64_t>(m.trials.size());
  }
  // Finished when every shard finished and none is missing.
  const bool finished = summary.missing_shards.empty() &&
                        std::all_of(in.begin(), in.end(), [](const MergeInput& m) { return !m.study.finished_at.empty(); });
  if (finished) {
    std::string last;
    for (const auto& m : in) last = std::max(last, m.study.finished_at);
    Transaction tx(db, output);
    Statement s(db, output, "UPDATE studies SET finished_at = ?");
    s.bind(1, last).run();
    tx.commit();
  }
  return summary;
}

}  // namespace mhd
