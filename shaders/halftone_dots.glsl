// Print: an fBm image reproduced as a rotated halftone dot screen in two inks.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float tone = fbm(uv * (1.0 + 2.0 * P0.x) + iTime * 0.03 + P0.w * 9.0, 4, 0.5);
    tone = smoothstep(0.2, 0.8, tone);
    float cells = 10.0 + 30.0 * P0.y;
    vec2 g = rot(P0.z * PI / 2.0) * uv * cells;
    vec2 f = fract(g) - 0.5;
    float dotR = sqrt(tone) * 0.7;
    float ink = smoothstep(dotR + 0.05, dotR - 0.05, length(f));
    vec2 g2 = rot(P0.z * PI / 2.0 + 0.5) * uv * cells * 0.9;
    float tone2 = 1.0 - tone;
    float ink2 = smoothstep(sqrt(tone2) * 0.5 + 0.05, sqrt(tone2) * 0.5 - 0.05, length(fract(g2) - 0.5));
    vec3 paper = ramp3(0.95, P1);
    vec3 col = paper * (1.0 - ink * (1.0 - ramp3(0.2, P2))) * (1.0 - ink2 * P2.w * (1.0 - ramp3(0.5, P3)));
    fragColor = vec4(col, 1.0);
}
