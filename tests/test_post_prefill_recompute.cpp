// test_post_prefill.cpp with a zero score-tile budget (AttentionOptions::post_score_tile_bytes):
// walks 2 and 3 of the post-softmax prefill recompute every score tile (the variant long caches
// take) instead of reading it back.
#define TT_POST_SCORE_TILE_BYTES 0
#define TT_POST_SUITE PostSoftmaxTilesRecomputed
#include "test_post_prefill.cpp"
